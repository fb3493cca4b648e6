"""MVLPT's multitask stages (models/prompting/methods/mvlpt.py), without Dagster: a source prompt trained on the pooled
few-shot sets of several datasets of different class sets, its seeds averaged, and the average that starts a target.

- `multitask_training_set`: the sources' training sets pooled (multi_source.pooled_training_set) with each source's
  labels offset by the classes before it, so that they index the concatenated class names;
- `train_multitask_source`: one seed's source prompt, trained through the shared loop on that pool;
- `average_source_checkpoints`: the seeds' source checkpoints averaged into one checkpoint folder;
- `source_prompt` / `target_start`: the averaged prompt a target experiment starts from (train_experiment's
  `start`).

The checkpoints live under workspace/multitask/<key>/ (`multitask_checkpoint_dir`): a source run's key is its
experiment key, the average's the key without its seed (`average_key`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from models.catalog.multitask import average_key
from models.experiments.training_sets import TrainingSet

if TYPE_CHECKING:
    from models.experiments.inputs import ExperimentInputs
    from models.experiments.training import TrainedPrompt
    from models.workspace import Workspace


def multitask_training_set(sources: Sequence[str], source_sets: dict[str, TrainingSet],
                           classnames: dict[str, Sequence[str]]) -> tuple[TrainingSet, list[str]]:
    """(pooled training set, concatenated class names) of the sources, in `sources` order: source i's labels (and
    val labels) are shifted by the number of classes of the sources before it (the code's `_task_class_idx`), and
    `domains` says which source each image comes from. A source without training images, or with a label outside
    its own class names, is refused."""
    offsets, names, shifted = {}, [], {}
    for source in sources:
        if source not in classnames or source not in source_sets:
            raise ValueError(f"source {source!r} needs a training set and its class names")
        part, n_classes = source_sets[source], len(classnames[source])
        if not len(part.labels):
            raise ValueError(f"source {source!r} has no training image; every source must contribute")
        labels = [part.labels] + ([part.validation[1]] if part.validation is not None else [])
        if any(int(t.min()) < 0 or int(t.max()) >= n_classes for t in labels if len(t)):
            raise ValueError(f"source {source!r}: labels outside its {n_classes} class names")
        offsets[source] = len(names)
        names += list(classnames[source])
        validation = None if part.validation is None else (part.validation[0],
                                                           part.validation[1] + offsets[source])
        shifted[source] = replace(part, labels=part.labels + offsets[source], validation=validation,
                                  composition=dict(part.composition))
    from models.experiments.multi_source import pooled_training_set

    return pooled_training_set(sources, shifted), names


def multitask_checkpoint_dir(workspace: Workspace, key: str) -> Path:
    """Where a source run's (experiment key) or a seed average's (average_key) prompt checkpoint lives."""
    return workspace.root / "multitask" / key / "prompt_checkpoint"


def train_multitask_source(source_inputs: Sequence[ExperimentInputs], workspace: Workspace, backbone,
                           log: Callable[[str], None] = lambda message: None) -> TrainedPrompt:
    """One seed's MVLPT source prompt: the experiment (the same for every input) trained on the pooled few-shot sets
    of the sources (one ExperimentInputs each, in source order), through the shared loop, cross-entropy over all
    their classes. The checkpoint config records every source and its data hash."""
    from models.data.index import dataset_fingerprint
    from models.experiments.checkpoints import checkpoint_config
    from models.experiments.classifiers import build_classifier
    from models.experiments.training import (TrainedPrompt, epoch_logger, optimization_config, selection_record,
                                             train_prompts)
    from models.experiments.training_sets import fewshot_training_set
    from models.prompting.methods.mvlpt import SOURCE_TEMPLATES

    if len(source_inputs) < 2:
        raise ValueError(f"a multitask source pools at least 2 datasets, got {[i.dataset.name for i in source_inputs]}")
    experiment = source_inputs[0].experiment
    if any(inputs.experiment != experiment for inputs in source_inputs):
        raise ValueError("every source trains the same experiment")
    sources = [inputs.dataset.name for inputs in source_inputs]
    source_sets = {inputs.dataset.name: fewshot_training_set(inputs, workspace, backbone,
                                                             list(range(len(inputs.classnames))))
                   for inputs in source_inputs}
    training_set, classnames = multitask_training_set(
        sources, source_sets, {inputs.dataset.name: inputs.classnames for inputs in source_inputs})
    classifier = build_classifier(backbone.model, backbone.tokenizer, experiment.method, experiment.parameters,
                                  classnames, list(SOURCE_TEMPLATES))
    optimization = optimization_config(experiment)
    log(f"training the {experiment.key} source prompt on {training_set.composition} ({len(classnames)} classes) for "
        f"{optimization.epochs} epochs, selection {training_set.selection}")
    history = train_prompts(classifier, training_set, optimization, on_epoch=epoch_logger(optimization.epochs, log),
                            device=backbone.device)
    config = checkpoint_config(source_inputs[0], backbone, classnames)
    config.update(dataset=None, data_hash=None, templates=list(SOURCE_TEMPLATES), sources=sources,
                  source_data_hashes={inputs.dataset.name: dataset_fingerprint(inputs.index)
                                      for inputs in source_inputs},
                  source_classes={name: len(names) for name, names in
                                  ((i.dataset.name, i.classnames) for i in source_inputs)},
                  model_selection=selection_record(training_set, history), optimization=optimization.__dict__,
                  training_composition=training_set.composition, epoch_losses=history.epoch_losses,
                  training_seconds=history.seconds, training_details=history.details)
    return TrainedPrompt(classifier, config, optimization, [history], training_set.composition, history.details)


def average_source_checkpoints(directories: Sequence[Path], destination: Path) -> Path:
    """Average the prompts of the source runs' checkpoints (one per seed) into `destination`, all or nothing, with
    a config naming what was averaged. The runs must be one method with the same parameters on the same sources."""
    from safetensors.torch import load_file, save_file

    from models.atomic import atomic_directory
    from models.experiments.checkpoints import CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS, read_checkpoint_config
    from models.prompting.methods.mvlpt import average_prompt_states

    configs = [read_checkpoint_config(directory) for directory in directories]
    for field_name in ("method", "parameters", "sources", "classnames", "backbone_weights_sha256"):
        values = {json.dumps(config.get(field_name), sort_keys=True) for config in configs}
        if len(values) > 1:
            raise ValueError(f"the source runs {[c['experiment']['key'] for c in configs]} differ in {field_name}; "
                             "only seeds of one source configuration are averaged")
    averaged = average_prompt_states([load_file(str(Path(directory) / CHECKPOINT_WEIGHTS))
                                      for directory in directories])
    first = configs[0]
    config = {key: first[key] for key in ("method", "parameters", "classnames", "templates", "sources",
                                          "source_classes", "backbone", "backbone_weights_sha256", "code_version")}
    config.update(averaged_over=[c["experiment"]["key"] for c in configs],
                  seeds=[c["experiment"]["seed"] for c in configs],
                  config_hashes=[c["config_hash"] for c in configs],
                  source_data_hashes=first["source_data_hashes"], experiment={**first["experiment"], "seed": None})
    with atomic_directory(Path(destination)) as staging:
        save_file({name: tensor.contiguous() for name, tensor in averaged.items()}, str(staging / CHECKPOINT_WEIGHTS))
        (staging / CHECKPOINT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return Path(destination)


@dataclass(frozen=True)
class SourcePrompt:
    """The averaged source prompt a target starts from (`state`), and what the target's checkpoint records of it."""

    state: dict[str, torch.Tensor]
    record: dict[str, Any]


def stored_prompt(directory: Path, method: str, parameters: dict[str, Any], what: str, missing_hint: str,
                  record_of) -> SourcePrompt:
    """A prompt stored in `directory` (checkpoint weights and config) that an experiment of `method` with
    `parameters` starts from; refused, saying how to make it (`missing_hint`) while it is missing, and when it was
    stored for another prompt. `what` names it in errors; record_of(config) is what the experiment records of it."""
    from safetensors.torch import load_file

    from models.experiments.checkpoints import CHECKPOINT_WEIGHTS, read_checkpoint_config

    weights = Path(directory) / CHECKPOINT_WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"the {what} {weights} is missing: {missing_hint}")
    config = read_checkpoint_config(directory)
    if config["method"] != method or config["parameters"] != parameters:
        raise ValueError(f"{directory}: the {what} was trained as {config['method']} {config['parameters']}, "
                         f"the experiment is {method} {parameters}")
    return SourcePrompt(load_file(str(weights)), {"directory": str(directory), **record_of(config)})


def source_prompt(directory: Path, method: str, parameters: dict[str, Any]) -> SourcePrompt:
    """The seed-averaged source prompt in `directory` for a target of `method` with `parameters` (stored_prompt)."""
    return stored_prompt(directory, method, parameters, "MVLPT source prompt",
                         "run the multitask source runs and their average first (multitask_job, "
                         "multitask_average_job)",
                         lambda config: {key: config[key] for key in ("sources", "averaged_over", "config_hashes")})


def target_start(catalog, workspace: Workspace, experiment_key: str) -> SourcePrompt | None:
    """The seed-averaged source prompt an experiment starts from when the catalog's multitask section makes it an
    MVLPT target (models/catalog/multitask.py); None for every other experiment."""
    average = catalog.multitask.average_of(experiment_key)
    if average is None:
        return None
    experiment = catalog.experiment(experiment_key)
    return source_prompt(multitask_checkpoint_dir(workspace, average), experiment.method, experiment.parameters)


def started_at(classifier, start: SourcePrompt | None):
    """The classifier with the source prompt copied in (mvlpt.initialise_from_source, or the classifier's own
    `initialise_from_state` where its start holds more than the prompt: GRAM's psi); unchanged without one."""
    if start is None:
        return classifier
    from models.prompting.methods.mvlpt import initialise_from_source

    own = getattr(classifier, "initialise_from_state", None)
    return own(start.state) if own is not None else initialise_from_source(classifier, start.state)


__all__ = ["SourcePrompt", "average_key", "average_source_checkpoints", "multitask_checkpoint_dir",
           "multitask_training_set", "source_prompt", "started_at", "target_start", "train_multitask_source"]
