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
- `held_out_accuracy`: a trained classifier's top-1 accuracy on the held-out domain's test inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from models.experiments.training_sets import TrainingSet


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
