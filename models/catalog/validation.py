"""How a catalog file is read and its fields checked, for every section alike.

`_read_yaml` reads one file's top-level mapping within the bounds of `limits` (an alias bomb is refused before any
value is built); `CatalogError` is what every refusal raises. The field checks name the file, the entry and the field
in their message, tell a misspelt key its nearest known one, shorten long values, and read a dataclass's annotations
(int, float, bool, str, Literal, X | None, tuple) and the range each field name has (INTEGER_MINIMUMS, FRACTIONS, ...)
so that a mapping the code reads into a dataclass is checked against that dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from models.catalog.limits import CatalogLimitError, load_bounded_yaml


class CatalogError(ValueError):
    pass


# Values in messages are shortened: a long list shows its first items, a long string its two ends (a message that
# repr()s a whole value can be as large as the value).
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict = 3, 10, 10
_SHORT_REPR.maxstring, _SHORT_REPR.maxother = 160, 160


def _shown(value: Any) -> str:
    """repr() of a catalog value for a message, shortened."""
    return _SHORT_REPR.repr(value)


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expandvars(value)
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    """A catalog file's top-level mapping, refused before any validation when it is malformed or larger than a
    catalog file can sensibly be (models/catalog/limits.py: an alias bomb is refused in milliseconds)."""
    if not path.exists():
        raise CatalogError(f"catalog file missing: {path}")
    try:
        content = load_bounded_yaml(path)
    except CatalogLimitError as error:
        raise CatalogError(str(error)) from None
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(content, dict):
        raise CatalogError(f"{path}: expected a mapping at the top level")
    return content


def _nearest(name: Any, known: Any) -> str:
    """' (did you mean 'x'?)' for a misspelt key, else ''."""
    match = difflib.get_close_matches(str(name), [str(key) for key in known], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _check_fields(where: str, raw: Any, known: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    """A catalog section must be a mapping whose keys are all known (a typo is told its nearest known key) and which
    sets every required key; errors name the section and the fields."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping with fields {list(known)}, got {_shown(raw)}")
    unknown = sorted((key for key in raw if key not in known), key=str)
    if unknown:
        hints = "".join(_nearest(key, known) for key in unknown[:1])
        raise CatalogError(f"{where}: unknown field(s) {unknown}{hints}; known: {list(known)}")
    missing = [key for key in required if raw.get(key) is None]
    if missing:
        raise CatalogError(f"{where}: missing required field(s) {missing}")


# Ranges by field name, wherever the field appears (optimization, augmentation, pseudolabels, world.yaml recipes,
# datasets): one rule per name. Integers below their minimum, and numbers outside their range, are refused.
INTEGER_MINIMUMS = {
    "epochs": 1, "batch_size": 1, "warmup_epochs": 0, "warmup_steps": 0, "seed": 0, "split_seed": 0,
    "num_pairs": 1, "image_size": 1, "family_size": 1, "num_threads": 1, "subject_caption_epochs": 0,
    "random_shift_pixels": 0, "sample_size": 1, "layers_per_block": 1, "norm_num_groups": 1,
    "num_train_timesteps": 1, "per_class": 1, "variations_per_image": 1, "num_inference_steps": 1,
}
POSITIVE_NUMBERS = ("learning_rate", "warmup_learning_rate", "eps")
NON_NEGATIVE_NUMBERS = ("momentum", "weight_decay", "min_learning_rate")
FRACTIONS = ("strength", "similarity_threshold")  # in [0, 1]


def _field_error(where: str, name: str, expected: str, value: Any) -> CatalogError:
    hint = ""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        hint = f" (YAML reads {value} as a string: write it with a dot and a signed exponent, e.g. 1.0e-5)"
    return CatalogError(f"{where}: '{name}' must be {expected}, got {_shown(value)}{hint}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is no integer


def _integer_value(where: str, name: str, value: Any, minimum: int | None = None) -> int:
    minimum = INTEGER_MINIMUMS.get(name.rsplit(".", 1)[-1]) if minimum is None else minimum
    expected = "an integer" + ("" if minimum is None else f" >= {minimum}")
    if not _is_integer(value) or (minimum is not None and value < minimum):
        raise _field_error(where, name, expected, value)
    return value


def _number_value(where: str, name: str, value: Any) -> float:
    base = name.rsplit(".", 1)[-1]
    if base in POSITIVE_NUMBERS:
        expected, valid = "a finite number > 0", lambda number: number > 0
    elif base in NON_NEGATIVE_NUMBERS:
        expected, valid = "a finite number >= 0", lambda number: number >= 0
    elif base in FRACTIONS:
        expected, valid = "a number in [0, 1]", lambda number: 0 <= number <= 1
    else:
        expected, valid = "a finite number", lambda number: True
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not math.isfinite(value) or not valid(
            value):
        raise _field_error(where, name, expected, value)
    return value


def _integer_list(where: str, name: str, value: Any, minimum: int) -> list[int]:
    """A non-empty list of distinct integers >= minimum (one experiment per value: a scalar is refused)."""
    expected = f"a non-empty list of distinct integers >= {minimum}, e.g. [{max(minimum, 1)}]"
    if not isinstance(value, list) or not value or any(not _is_integer(item) or item < minimum for item in value) \
            or len(set(value)) != len(value):
        raise _field_error(where, name, expected, value)
    return value


def _value_of_type(where: str, name: str, value: Any, annotation: Any) -> None:
    """Check a value against a dataclass field's annotation (int, float, bool, str, Literal, X | None, tuple)."""
    options = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if value is None and type(None) in options:
            return
        annotation = next(option for option in options if option is not type(None))
        options = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        if value not in options:
            raise _field_error(where, name, f"one of {list(options)}", value)
    elif annotation is bool:
        if not isinstance(value, bool):
            raise _field_error(where, name, "true or false", value)
    elif annotation is int:
        _integer_value(where, name, value)
    elif annotation is float:
        _number_value(where, name, value)
    elif annotation is str:
        if not isinstance(value, str):
            raise _field_error(where, name, "a string", value)
    elif typing.get_origin(annotation) is tuple:
        if not isinstance(value, list) or not value:
            raise _field_error(where, name, "a non-empty list", value)
        for index, item in enumerate(value):
            _value_of_type(where, f"{name}[{index}]", item, options[0])


_type_hints = functools.cache(typing.get_type_hints)  # of a few dataclasses, asked for once per checked mapping


def _check_dataclass_fields(where: str, raw: Any, recipe: type, prefix: str = "", exclude: tuple[str, ...] = (),
                            extra: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """A catalog mapping read into a dataclass (`recipe`): only its fields (less `exclude`, plus `extra`, which the
    caller checks), each of the field's type and in the range its name has."""
    hints = _type_hints(recipe)
    known = tuple(f.name for f in dataclasses.fields(recipe) if f.name not in exclude) + extra
    _check_fields(f"{where}{' ' + prefix.rstrip('.') if prefix else ''}", raw, known, required)
    for name, value in raw.items():
        if name not in extra:
            _value_of_type(where, f"{prefix}{name}", value, hints[name])
