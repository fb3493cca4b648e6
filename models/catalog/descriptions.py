"""assets_catalog/descriptions/<Dataset>.yaml: key phrases per class (models/prompting/class_descriptions.py), checked
when the catalog loads and attached to their dataset's entry.

Every file must be named after a dataset of datasets.yaml (a suite's datasets may leave some of the catalog's files
unused: those are still checked for shape). An embedded dataset's class names are known here (models.embedded), so
its file must describe exactly those classes; a dataset read from disk learns its class names from its split file,
and a method reading its descriptions refuses a missing class when its classifier is built, before training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from models.catalog.datasets import DatasetEntry
from models.catalog.validation import CatalogError, _read_yaml
from models.prompting.class_descriptions import ClassDescriptions, ClassDescriptionsError

DESCRIPTIONS_FOLDER = "descriptions"


def known_classnames(entry: DatasetEntry) -> tuple[str, ...] | None:
    """The dataset's class names where the catalog knows them (embedded datasets), else None."""
    if entry.source != "embedded":
        return None
    from models.embedded import embedded_classnames

    return tuple(embedded_classnames(entry.name))


def attach_class_descriptions(directory: Path, datasets: list[DatasetEntry]) -> list[DatasetEntry]:
    """The datasets, each with its descriptions file's content where there is one (checked: CatalogError naming
    the file, class and field)."""
    folder = directory / DESCRIPTIONS_FOLDER
    if not folder.is_dir():
        return datasets
    by_name = {entry.name: entry for entry in datasets}
    found: dict[str, ClassDescriptions] = {}
    for path in sorted(folder.glob("*.yaml")):
        where = f"{DESCRIPTIONS_FOLDER}/{path.name}"
        try:
            descriptions = ClassDescriptions.from_mapping(where, _read_yaml(path))
            entry = by_name.get(path.stem)
            classnames = known_classnames(entry) if entry is not None else None
            if classnames is not None:
                descriptions.check_classes(classnames)
        except ClassDescriptionsError as error:
            raise CatalogError(str(error)) from error
        found[path.stem] = descriptions
    return [dataclasses.replace(entry, class_descriptions=found[entry.name]) if entry.name in found else entry
            for entry in datasets]
