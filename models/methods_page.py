"""The methods page (`promptlab methods`, docs/methods.md), generated from the registries.

Prompt methods come from models.prompting.methods (each MethodSpec declares its paper, hook points and verification;
its parameters and defaults are its parameter dataclass, with methods.yaml's published values where they differ),
pseudolabel strategies from models.pseudolabels.STRATEGIES, test-time modes from
models.catalog.testtime_settings. Nothing here is written by hand per method except the papers and checks of the
strategies and test-time modes below, whose registries have no field for them yet.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Any

import yaml

from models.catalog import DEFAULT_CATALOG_DIR
from models.catalog.testtime_settings import PUBLISHED_DEFAULTS, TestTimeSettings
from models.prompting.methods import METHODS, MethodSpec
from models.prompting.methods.registry import HOOK_POINTS, Paper, Verification, tested_property
from models.pseudolabels import STRATEGIES

REGENERATE = "`.venv/bin/promptlab methods > docs/methods.md`"

MENGHINI = Paper("Menghini et al.", "Enhancing CLIP with CLIP: Exploring Pseudolabeling for Limited-Label Prompt "
                 "Tuning", "NeurIPS 2023", "https://arxiv.org/abs/2306.01669")
PSEUDOLABEL_CHECKS: dict[str, Verification] = {
    "fpl": tested_property(
        "One round of zero-shot pseudolabels, K per class, the labelled term weighted by |PL|/|L|.",
        "tests/prompting/test_limited_labels.py::test_fpl_is_one_round_of_zero_shot_pseudolabels_weighted_pl_over_l"),
    "ifpl": tested_property(
        "K stays fixed and each round relabels the pool with the previous round's prompts.",
        "tests/prompting/test_limited_labels.py::test_ifpl_keeps_k_and_relabels_with_the_previous_rounds_prompts"),
    "grip": tested_property(
        "K grows by the published schedule until the whole pool is used, one class per image.",
        "tests/prompting/test_limited_labels.py::test_grip_grows_k_by_the_published_schedule_until_the_whole_pool"),
}
LABELLED_WEIGHTING_FORMULAS = {
    "pseudo_over_labelled": "(|PL| / |L|) CE(labelled) + CE(pseudolabelled)",
    "labelled_over_pseudo": "(|L| / |PL|) CE(labelled) + CE(pseudolabelled)",
}

TEST_TIME_PAPERS = {
    "tpt": Paper("Shu et al.", "Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language Models",
                 "NeurIPS 2022", "https://arxiv.org/abs/2209.07511"),
    "difftpt": Paper("Feng et al.", "Diverse Data Augmentation with Diffusions for Effective Test-time Prompt Tuning",
                     "ICCV 2023", "https://arxiv.org/abs/2308.06038"),
}
TEST_TIME_CHECKS = {
    "tpt": tested_property(
        "With no step, TPT from \"a photo of a\" predicts exactly what zero-shot CLIP with \"a photo of a {}.\" does.",
        "tests/testtime/test_tpt.py::test_zero_steps_predict_exactly_what_zero_shot_predicts"),
    "difftpt": tested_property(
        "The code's filter keeps the views whose logits are most like the original's, then the lowest-entropy of "
        "those; the paper's filters generated views by image similarity.",
        "tests/testtime/test_tpt.py::test_difftpt_filters"),
}


def methods_page(catalog_dir: Path | str = DEFAULT_CATALOG_DIR) -> str:
    """The whole page as Markdown, for the catalog in `catalog_dir` (its methods.yaml's published defaults)."""
    published = read_published_defaults(Path(catalog_dir) / "methods.yaml")
    parts = [
        "# Methods\n",
        f"Generated from the registries by `promptlab methods` ({_code('models/methods_page.py')}); do not edit: "
        f"change a method's registration and run {REGENERATE} (a test compares the two).\n",
        "Every prompt method is one module in `models/prompting/methods/`, registered once with its paper, where it "
        "hooks into CLIP and how it is verified. *Hooks* name where it acts: " + ", ".join(HOOK_POINTS) + " (the "
        "training update itself); *none* is zero-shot CLIP. *Cached features*: a method whose image tower is frozen "
        "and unprompted trains on image features encoded once and read from the feature cache; a method that "
        "prompts the image tower trains on images. *Verified*: **reference** means equal to the authors' code on "
        "the reference tiny CLIP (`tests/data/*_reference.*`), **property** names the published property a test "
        "checks.\n",
        "## Prompt methods\n",
        _overview_table(),
        *(_method_section(spec, published.get(spec.name)) for spec in METHODS.values()),
        _pseudolabel_section(),
        _test_time_section(),
    ]
    return "\n".join(parts).rstrip("\n") + "\n"


def read_published_defaults(methods_file: Path) -> dict[str, dict[str, Any]]:
    """methods.yaml's entries by method name ({"parameters": ..., "optimization": ...}); load_catalog checks them."""
    raw = yaml.safe_load(methods_file.read_text()) or {}
    return {name: entry or {} for name, entry in (raw.get("methods") or {}).items()}


def _code(text: str) -> str:
    return f"`{text}`"


def _value(value: Any) -> str:
    """A value as it is written in the catalog's YAML."""
    if value is None or isinstance(value, (bool, str)):
        return json.dumps(value)
    return repr(value)


def _cite(paper: Paper | None) -> str:
    if paper is None:
        return "(no paper declared)"
    title = f"[{paper.title}]({paper.link})" if paper.link else paper.title
    return f"{paper.authors}, {title}, {paper.venue}"


def _hooks(spec: MethodSpec) -> str:
    return ", ".join(spec.hook_points) if spec.hook_points else "none"


def _verified(verification: Verification | None, short: bool = False) -> str:
    if verification is None:
        return "(no verification declared)"
    test = _code(verification.test)
    if verification.kind == "reference":
        where = f"reference: equal to the authors' code ({verification.authors_code})"
        return where if short else f"{where} on the reference set. {verification.statement} {test}"
    return "property" if short else f"property: {verification.statement} {test}"


SELECTION_WORDS = {
    "last": "`last` (no validation: the defaults and the last epoch)",
    "few_shot_val": "`few_shot_val` (the K-shot val subset, min(K, 4) per class)",
    "full_val": "`full_val` (the dataset's whole val split)",
}


def _selection(spec: MethodSpec) -> str:
    note = f" {spec.selection_note}" if spec.selection_note else ""
    return f"{SELECTION_WORDS[spec.selection]}; a grid entry's `selection:` overrides it, test is never one.{note}"


def _cached_features(spec: MethodSpec) -> str:
    closed_form = not getattr(spec.build, "trained_by_gradient", True)
    if not spec.trains_prompts:
        return "nothing to train; it scores cached image features"
    if not spec.frozen_image_encoder and not any(point.startswith("image") for point in spec.hook_points):
        return "no: it reads the image tower beyond its output at every step (see its hooks), so it trains on images"
    if not spec.frozen_image_encoder:
        return "no: its prompts change the image features, so it trains on images through the prompted image tower"
    fitted = (" (trained by its own `fit`: a closed form, or its own schedule through the shared loop)"
              if closed_form else "")
    return f"yes: the image tower is frozen and unprompted{fitted}"


def _overview_table() -> str:
    rows = ["| Method | Paper | Hooks | Cached features | Verified |", "|---|---|---|---|---|"]
    for spec in METHODS.values():
        paper = f"{spec.paper.authors}, {spec.paper.venue}" if spec.paper else "?"
        cached = "yes" if spec.frozen_image_encoder else "no"
        verified = _verified(spec.verification, short=True).split(":")[0]
        rows.append(f"| [`{spec.name}`](#{spec.name}) | {paper} | {_hooks(spec)} | {cached} | {verified} |")
    return "\n".join(rows) + "\n"


def _module_path(spec: MethodSpec) -> str:
    module = inspect.getmodule(spec.parameters_type)
    return module.__name__.replace(".", "/") + ".py" if module else "?"


def _method_section(spec: MethodSpec, published: dict[str, Any] | None) -> str:
    lines = [
        f"### {spec.name}\n",
        f"{spec.description}\n",
        f"- Paper: {_cite(spec.paper)}",
        f"- Hooks: {_hooks(spec)} ({spec.hooks.removeprefix('none: ')})",
        f"- Trains on cached features: {_cached_features(spec)}",
        *([f"- Training views: {spec.training_views.describe()} (a view recipe, cached per image and pass)"]
          if spec.training_views is not None else []),
        *([f"- Model selection: {_selection(spec)}"] if spec.trains_prompts else []),
        f"- Verified: {_verified(spec.verification)}",
        f"- Module: {_code(_module_path(spec))}",
        "",
        _parameters_table(spec, published),
    ]
    schedule = (published or {}).get("optimization")
    if schedule:
        lines.append(f"Published schedule (methods.yaml): {_schedule(schedule)}.\n")
    elif published is None:
        lines.append("Not listed in methods.yaml: no grid can select it.\n")
    return "\n".join(lines)


def _parameters_table(spec: MethodSpec, published: dict[str, Any] | None) -> str:
    fields = dataclasses.fields(spec.parameters_type)
    if not fields:
        return "No parameters.\n"
    catalog = (published or {}).get("parameters") or {}
    comments = _field_comments(spec.parameters_type)
    rows = [f"Parameters ({_code(spec.parameters_type.__name__)}):\n", "| Parameter | Default | Meaning |",
            "|---|---|---|"]
    for field in fields:
        default = _field_default(field)
        default = list(default) if isinstance(default, tuple) else default  # YAML writes a tuple as a list
        shown = _code(_value(default))
        if field.name in catalog and catalog[field.name] != default:
            shown = f"{_code(_value(catalog[field.name]))} (methods.yaml; dataclass {_code(_value(default))})"
        rows.append(f"| {_code(field.name)} | {shown} | {_cell(comments.get(field.name, ''))} |")
    return "\n".join(rows) + "\n"


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _field_comments(parameters_type: type) -> dict[str, str]:
    """Each field's comment in the dataclass source (trailing, else the comment lines just above it), nearest class
    first."""
    comments: dict[str, str] = {}
    for cls in parameters_type.__mro__:
        if not dataclasses.is_dataclass(cls):
            continue
        above: list[str] = []
        for line in inspect.getsource(cls).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("#").strip())
                continue
            match = re.match(r"\s+(\w+):[^#]*(?:#\s*(.+))?$", line)
            if match and match.group(1) not in comments and (match.group(2) or above):
                comments[match.group(1)] = match.group(2) or " ".join(above)
            above = []
    return comments


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: a "|" would end the cell."""
    return text.replace("|", "\\|")


def _schedule(optimization: dict[str, Any]) -> str:
    parts = [f"{key} {_value(value)}" for key, value in optimization.items() if key != "epochs_by_shots"]
    by_shots = optimization.get("epochs_by_shots")
    if by_shots:
        parts.append("epochs by shots " + ", ".join(f"{shots}: {epochs}" for shots, epochs in by_shots.items()))
    return ", ".join(parts)


def _pseudolabel_section() -> str:
    lines = [
        "## Pseudolabel strategies\n",
        f"From {_code('models/pseudolabels.py')} (`STRATEGIES`), after {_cite(MENGHINI)}. Round 0 pseudolabels the "
        "unlabelled pool with zero-shot CLIP, each later round with the prompts trained in the round before; any "
        "prompt method trains on the pseudolabels.\n",
        "| Strategy | Rounds | K per class | Loss | What it does | Verified |",
        "|---|---|---|---|---|---|",
    ]
    for name, strategy in STRATEGIES.items():
        k = "grows to the whole pool" if strategy.growing else "fixed (the experiment's `per_class`)"
        loss = LABELLED_WEIGHTING_FORMULAS.get(strategy.labelled_weighting, strategy.labelled_weighting)
        cells = [_code(name), str(strategy.rounds), k, loss, strategy.description,
                 _verified(PSEUDOLABEL_CHECKS.get(name))]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _test_time_section() -> str:
    mode_keys = {key for defaults in PUBLISHED_DEFAULTS.values() for key in defaults}
    shared = {field.name: field.default for field in dataclasses.fields(TestTimeSettings)
              if field.name not in mode_keys | {"mode"}}
    lines = [
        "## Test-time modes\n",
        f"From {_code('models/catalog/testtime_settings.py')} (`PUBLISHED_DEFAULTS`). For each test image the prompt "
        "of the starting method (zero-shot CLIP or a trained checkpoint) is reset, tuned on that image's confident views "
        "by minimising the entropy of their averaged prediction, and the original view is predicted "
        f"({_code('models/testtime/tuning.py')}). Settings every mode shares (`TestTimeSettings`): "
        + _settings(shared) + ".\n",
    ]
    for mode, defaults in PUBLISHED_DEFAULTS.items():
        lines += [
            f"### {mode}\n",
            f"- Paper: {_cite(TEST_TIME_PAPERS.get(mode))}",
            f"- Verified: {_verified(TEST_TIME_CHECKS.get(mode))}",
            f"- Published settings: {_settings(defaults)}",
            "",
        ]
    return "\n".join(lines)


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{_code(key)} {_code(_value(value))}" for key, value in settings.items())
