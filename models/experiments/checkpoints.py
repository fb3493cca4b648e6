"""A learned prompt's folder: its parameters (safetensors) beside the config that rebuilds them
(`checkpoint_config`), and every round's pseudolabels; `load_prompt_checkpoint` rebuilds the classifier from the
folder alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch
from safetensors.torch import load_file, save_file

from models.atomic import atomic_directory
from models.experiments.classifiers import build_classifier
from models.prompting.class_descriptions import ClassDescriptions
from models.prompting.methods import get_method
from models.prompting.methods.registry import PromptedClassifier

if TYPE_CHECKING:
    from models.experiments.inputs import ExperimentInputs


CHECKPOINT_CONFIG = "prompt_config.json"


CHECKPOINT_WEIGHTS = "prompt_parameters.safetensors"


# Every round's pseudolabels (round, per_class, relative_path, pseudo_label, confidence) of a pseudolabel strategy.
CHECKPOINT_PSEUDOLABEL_ROUNDS = "pseudolabel_rounds.parquet"


def checkpoint_config(inputs: ExperimentInputs, backbone, classnames: list[str]) -> dict[str, Any]:
    """The record saved beside a learned prompt: what rebuilds its classifier (method, parameters, class names,
    templates) and what it was learned from (experiment, data, backbone weights, library code); training adds how it
    trained (train_experiment)."""
    from models.data.index import dataset_fingerprint
    from models.provenance import library_code_version

    experiment = inputs.experiment
    groups = inputs.dataset.template_groups
    # the template groups a method with one prompt per group (MoCoOp) learned from, where the dataset has them
    template_groups = ({"template_groups": groups.as_dict()}
                       if groups is not None and get_method(experiment.method).reads_template_groups else {})
    # the class descriptions a knowledge-prompt method (KAPT) learned with, or that it fell back to the template
    descriptions = {}
    if get_method(experiment.method).reads_class_descriptions:
        found = inputs.dataset.class_descriptions
        descriptions = {"class_descriptions": found.as_dict() if found is not None else None,
                        "knowledge_prompt": found.file if found is not None else "template"}
    return {
        **template_groups,
        **descriptions,
        "method": experiment.method,
        "parameters": experiment.parameters,
        "classnames": classnames,
        "protocol": experiment.protocol,
        "templates": inputs.templates,
        "experiment": experiment.as_dict(),
        "config_hash": experiment.config_hash,
        "dataset": inputs.dataset.name,
        "data_hash": dataset_fingerprint(inputs.index),
        "backbone": backbone.spec.name,
        "backbone_weights_sha256": backbone.weights_sha256,
        "code_version": library_code_version(),
    }


def save_prompt_checkpoint(directory: Path, classifier: PromptedClassifier, config: dict[str, Any],
                           pseudolabel_rounds: pl.DataFrame | None = None) -> Path:
    """Write the learned prompt parameters with the config that rebuilds them (and every round's pseudolabels),
    all or nothing."""
    with atomic_directory(Path(directory)) as staging:
        state = classifier.trainable_state()
        if state:
            save_file(state, str(staging / CHECKPOINT_WEIGHTS))
        if pseudolabel_rounds is not None:
            pseudolabel_rounds.write_parquet(staging / CHECKPOINT_PSEUDOLABEL_ROUNDS)
        (staging / CHECKPOINT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return Path(directory)


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CHECKPOINT_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"prompt checkpoint config missing: {path}")
    return json.loads(path.read_text())


def load_prompt_checkpoint(
    directory: Path,
    clip_model: torch.nn.Module,
    tokenizer,
    classnames: list[str] | None = None,
    templates: list[str] | None = None,
    backbone_weights_sha256: str | None = None,
    text_cache=None,
    class_descriptions: Any = "recorded",
) -> tuple[PromptedClassifier, dict]:
    """Rebuild a classifier from its checkpoint folder alone (config + learned parameters); `text_cache` as in
    build_classifier.

    `classnames` applies the learned prompt to other classes than it was trained on (new classes in
    base-to-new, another dataset's classes in cross-dataset transfer); class-specific parameters cannot transfer.
    `templates` replaces the hand-crafted templates the classifier was trained with (a transfer target's own), for
    methods that use them at prediction time (zero-shot, VPT's text side); the returned config says which were used.
    `class_descriptions` (KAPT's knowledge) are the evaluated dataset's (models.prompting.class_descriptions; None:
    it has none, the template stands in); "recorded": those the checkpoint was trained with.
    """
    config = read_checkpoint_config(directory)
    trained_on = config.get("backbone_weights_sha256")
    if backbone_weights_sha256 is not None and trained_on != backbone_weights_sha256:
        raise ValueError(f"{directory}: the checkpoint was trained on other backbone weights "
                         f"({str(trained_on)[:12]} != {backbone_weights_sha256[:12]}); retrain it")
    target_classnames = classnames if classnames is not None else config["classnames"]
    if templates is not None:
        config = {**config, "trained_templates": config["templates"], "templates": list(templates)}
    # A per-group method's prompts belong to the groups it was trained with, whatever the target's templates.
    classifier = build_classifier(
        clip_model, tokenizer, config["method"], config["parameters"], target_classnames, config["templates"],
        text_cache=text_cache, template_groups=config.get("template_groups"),
        class_descriptions=(ClassDescriptions.from_dict(config.get("class_descriptions"))
                            if class_descriptions == "recorded" else class_descriptions),
    )
    weights = Path(directory) / CHECKPOINT_WEIGHTS
    if weights.exists():
        state = load_file(str(weights))
        expected = {name: tuple(p.shape) for name, p in classifier.trainable_state().items()}
        mismatched = sorted(n for n, t in state.items() if n in expected and tuple(t.shape) != expected[n])
        if mismatched:
            raise ValueError(f"{weights}: parameters {mismatched} have class-specific shapes and cannot be applied "
                             f"to {len(target_classnames)} other classes")
        missing = classifier.load_state_dict(state, strict=False)
        unexpected = [k for k in missing.unexpected_keys]
        if unexpected:
            raise ValueError(f"{weights}: parameters {unexpected} do not belong to method {config['method']!r}")
    elif get_method(config["method"]).trains_prompts:
        raise FileNotFoundError(f"prompt checkpoint weights missing: {weights}")
    return classifier.eval(), config
