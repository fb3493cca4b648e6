"""Multi-source domain generalisation: train on several source domains of one class set, test on a held-out one.

A domain family is either several catalog datasets of one class set (the embedded Shapes, ShapesSketch and
ShapesNoisy: datasets.yaml `domain_shift_of`), each with its own few-shot split, or one DomainBed dataset entry
whose train split already pools the source domains (models/data/layouts/domainbed.py: its relative paths start
with the domain folder, its test split is the held-out domain's). Either way the training set is the union of the
source domains' training images with a domain index per image (`TrainingSet.domains`, for methods that read it:
SPG's domain prompts; the others ignore it), and the held-out domain's images never enter it.

- `leave_one_domain_out`: the sources left when one domain of a family is held out (refusing what leaves none);
- `multi_source_training_set`: the union of the sources' training sets, validation sets too, with domain indices
  (`pooled_training_set`, which MVLPT's multitask sources share);
- `domains_of_relative_paths`: the domain indices of a pooled DomainBed training split;
- `held_out_accuracy`: a trained classifier's top-1 accuracy on the held-out domain's test inputs;
- `train_multi_source`: an experiment trained on the union of its sources' few-shot sets, each built as an experiment
  on that dataset builds it (`source_training_sets`), with the config its checkpoint is saved with;
- `held_out_scores`: that checkpoint scored on the held-out domain's test split, with its class names and templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from models.experiments.training_sets import TrainingSet

if TYPE_CHECKING:
    from models.experiments.inputs import ExperimentInputs
    from models.experiments.training import TrainedPrompt
    from models.workspace import Workspace


@dataclass(frozen=True)
class DomainSplit:
    """One leave-one-domain-out split of a family: the held-out (test) domain and the sources, in family order."""

    held_out: str
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError(f"holding out {self.held_out!r} leaves no source domain to train on")
        if self.held_out in self.sources:
            raise ValueError(f"the held-out domain {self.held_out!r} is also a source {list(self.sources)}")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"source domains listed twice: {list(self.sources)}")


def leave_one_domain_out(family: Sequence[str], held_out: str) -> DomainSplit:
    """The split that tests on `held_out` and trains on every other domain of `family`."""
    if held_out not in family:
        raise ValueError(f"held-out domain {held_out!r} is not in the family {list(family)}")
    return DomainSplit(held_out, tuple(domain for domain in family if domain != held_out))


def multi_source_training_set(split: DomainSplit, source_sets: dict[str, TrainingSet]) -> TrainingSet:
    """The union of the source domains' training sets (each built as any experiment's, e.g. fewshot_training_set on
    that dataset), in the split's source order, with `domains` indexing `domain_names`. The held-out domain's set
    is refused, as are sources missing or of different input shapes."""
    if split.held_out in source_sets:
        raise ValueError(f"the held-out domain {split.held_out!r} was given a training set; its images must never "
                         "enter training")
    return pooled_training_set(split.sources, source_sets)


def pooled_training_set(sources: Sequence[str], source_sets: dict[str, TrainingSet]) -> TrainingSet:
    """The union of one training set per source, in `sources` order, with `domains` indexing `domain_names`
    (= sources); validation sets pooled too. Labels are kept as given: domains of one class set share them, and
    sources of different class sets come offset (models/experiments/multitask.py). Sources missing or of different
    input shapes are refused."""
    missing = [name for name in sources if name not in source_sets]
    extra = sorted(set(source_sets) - set(sources))
    if missing or extra:
        raise ValueError(f"training sets given for {sorted(source_sets)}, but the sources are {list(sources)}")
    parts = [source_sets[name] for name in sources]
    shapes = {tuple(part.view_inputs.shape[1:]) for part in parts}
    if len(shapes) > 1:
        raise ValueError(f"the source domains' inputs differ in shape {sorted(shapes)} (views, feature width): "
                         "build them with the same method, backbone and view recipe")
    if any(part.domains is not None for part in parts):
        raise ValueError("a source training set already carries domain labels; give one set per domain")
    weights = None
    if any(part.sample_weights is not None for part in parts):
        weights = torch.cat([part.sample_weights if part.sample_weights is not None
                             else torch.ones(len(part.labels)) for part in parts])
    composition: dict[str, int] = {}
    for name, part in zip(sources, parts):
        for key, count in part.composition.items():
            composition[f"{name}:{key}"] = count
    validations = [part.validation for part in parts]
    validation = None
    if all(v is not None for v in validations):
        validation = (torch.cat([v[0] for v in validations]), torch.cat([v[1] for v in validations]))
    selection = parts[0].selection if validation is not None or parts[0].selection == "last" else "last"
    return TrainingSet(
        view_inputs=torch.cat([part.view_inputs for part in parts]),
        labels=torch.cat([part.labels for part in parts]).long(),
        sample_weights=weights,
        composition=composition,
        validation=validation,
        selection=selection,
        selection_asked=parts[0].selection_asked,
        domains=torch.cat([torch.full((len(part.labels),), index, dtype=torch.long)
                           for index, part in enumerate(parts)]),
        domain_names=tuple(sources),
    )


def domains_of_relative_paths(relative_paths: Sequence[str]) -> tuple[torch.Tensor, tuple[str, ...]]:
    """(domain index per image, sorted domain names) of a pooled DomainBed split, whose relative paths start with
    the domain folder (``art_painting/dog/pic_001.jpg``)."""
    folders = [path.replace("\\", "/").split("/", 1)[0] for path in relative_paths]
    if any("/" not in path.replace("\\", "/") for path in relative_paths):
        raise ValueError("a relative path without a domain folder: expected <domain>/<class>/<image>")
    names = tuple(sorted(set(folders)))
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[folder] for folder in folders], dtype=torch.long), names


def held_out_accuracy(classifier, test_inputs: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Top-1 accuracy of a trained classifier on the held-out domain's test inputs (its test split)."""
    from models.prompting.training import predict_logits

    logits = predict_logits(classifier, test_inputs)
    return float((logits.argmax(dim=1) == test_labels.cpu()).float().mean())


def check_multi_source_experiment(experiment) -> None:
    """An experiment a multi-source split can train: a method that learns, on all classes of its few-shot subsets;
    no learning setting, pseudolabels or diffusion variations (each belongs to one dataset's partition)."""
    from models.experiments.training import trains_from_pool
    from models.prompting.methods import get_method

    if not get_method(experiment.method).trains_prompts:
        raise ValueError(f"{experiment.key}: {experiment.method} trains nothing; its own evaluation on the held-out "
                         "dataset is the reference row")
    if experiment.protocol != "all_classes":
        raise ValueError(f"{experiment.key}: protocol {experiment.protocol}; multi-source training uses all classes")
    if trains_from_pool(experiment) or experiment.augmentation is not None:
        raise ValueError(f"{experiment.key}: a learning setting, pseudolabels or augmentation belong to one dataset's "
                         "partition; multi-source training takes the sources' few-shot subsets alone")


def check_same_classes(classnames: dict[str, list[str]]) -> list[str]:
    """The class names every domain of a split shares (same names, same order: labels index them); refused
    otherwise, naming the dataset that differs."""
    (first, names), *others = classnames.items()
    for name, other in others:
        if list(other) != list(names):
            raise ValueError(f"{name}'s classes {list(other)} differ from {first}'s {list(names)}: the domains of a "
                             "multi-source split share one class set")
    return list(names)


def check_source_inputs(split: DomainSplit, source_inputs: dict) -> None:
    """Inputs for exactly the split's sources: the held-out domain's are refused (its images never enter training)."""
    if split.held_out in source_inputs or sorted(source_inputs) != sorted(split.sources):
        raise ValueError(f"inputs given for {sorted(source_inputs)}; the sources of the split holding "
                         f"{split.held_out} out are {list(split.sources)}")


def source_training_sets(split: DomainSplit, source_inputs: dict[str, ExperimentInputs], workspace: Workspace,
                         backbone) -> dict[str, TrainingSet]:
    """Each source's few-shot training set exactly as the experiment on that dataset builds it (fewshot_training_set:
    its shots, seed, view recipe and selection policy's val rows), on all classes. Only the split's sources are
    read: the held-out domain is refused here, so its images cannot reach training."""
    from models.experiments.training_sets import fewshot_training_set

    check_source_inputs(split, source_inputs)
    return {name: fewshot_training_set(source_inputs[name], workspace, backbone,
                                       list(range(len(source_inputs[name].classnames))))
            for name in split.sources}


def train_multi_source(split: DomainSplit, source_inputs: dict[str, ExperimentInputs], workspace: Workspace,
                       backbone, text_cache=None, log: Callable[[str], None] = lambda message: None) -> TrainedPrompt:
    """The experiment's method trained on the union of its sources' few-shot sets (a domain index per image: SPG
    learns a domain prompt per source, CoOp ignores them), with the config its checkpoint is saved with: the
    experiment's, plus the split and each source's data hash. Templates: the first source's (the held-out domain's
    are never read in training)."""
    from models.data.index import dataset_fingerprint
    from models.experiments.checkpoints import checkpoint_config
    from models.experiments.classifiers import build_classifier
    from models.experiments.training import (TrainedPrompt, epoch_logger, optimization_config, selection_record,
                                             train_prompts)
    from models.provenance import stable_hash

    check_source_inputs(split, source_inputs)
    first = source_inputs[split.sources[0]]
    experiments = {inputs.experiment.key for inputs in source_inputs.values()}
    if len(experiments) != 1:
        raise ValueError(f"one experiment's inputs on each source of {list(split.sources)}, got {sorted(experiments)}")
    experiment = first.experiment
    check_multi_source_experiment(experiment)
    classnames = check_same_classes({name: source_inputs[name].classnames for name in split.sources})
    training_set = multi_source_training_set(split, source_training_sets(split, source_inputs, workspace, backbone))
    classifier = build_classifier(backbone.model, backbone.tokenizer, experiment.method, experiment.parameters,
                                  classnames, first.templates, text_cache=text_cache,
                                  template_groups=first.dataset.template_groups, dataset_classnames=classnames)
    optimization = optimization_config(experiment)
    log(f"training {experiment.method} on {training_set.composition} (sources {list(split.sources)}, "
        f"{split.held_out} held out) for {optimization.epochs} epochs, selection {training_set.selection}")
    history = train_prompts(classifier, training_set, optimization, on_epoch=epoch_logger(optimization.epochs, log),
                            device=backbone.device)
    source_hashes = {name: dataset_fingerprint(source_inputs[name].index) for name in split.sources}
    config = checkpoint_config(first, backbone, classnames)
    config.update(
        dataset="+".join(split.sources), data_hash=stable_hash(source_hashes),
        multi_source={"held_out": split.held_out, "sources": list(split.sources), "source_data_hashes": source_hashes},
        model_selection=selection_record(training_set, history),
        training_views=(experiment.view_recipe.as_dict() if experiment.view_recipe is not None
                        else "original and mirrored"),
        optimization=optimization.__dict__, training_composition=training_set.composition,
        epoch_losses=history.epoch_losses, training_seconds=history.seconds, training_details=history.details)
    return TrainedPrompt(classifier, config, optimization, [history], training_set.composition, history.details)


def held_out_scores(checkpoint_dir: Path, held_out_inputs: ExperimentInputs, workspace: Workspace, backbone,
                    text_cache=None):
    """(checkpoint config, test split, its metrics) of a multi-source prompt on the held-out domain's test split,
    with that domain's class names (the sources' own, checked) and templates, as a transferred prompt is scored."""
    from models.experiments.checkpoints import read_checkpoint_config
    from models.experiments.scoring import transferred_prompt_scores

    trained = read_checkpoint_config(checkpoint_dir)
    check_same_classes({"the sources": trained["classnames"], held_out_inputs.dataset.name: held_out_inputs.classnames})
    return transferred_prompt_scores(checkpoint_dir, held_out_inputs, workspace, backbone, text_cache=text_cache)
