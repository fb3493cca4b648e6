"""Upstream initialisations (the catalog's `initialisations:` section; GRAM and PVP), without Dagster: a prompt learned
on the embedded image-caption corpus that later experiments start from.

- `upstream_data`: the first `corpus_pairs` pairs of the corpus as caption classes (models/prompting/upstream.py),
  in the inputs the prompt type takes, with GRAM's cross-modal domains;
- `train_initialisation`: GRAM's meta-training or PVP's pre-training of one entry, returning its state and record;
- `save_initialisation`: that state and record in a checkpoint folder, all or nothing;
- `initialisation_start`: the state an experiment naming the initialisation starts from (train_experiment's
  `start`, as MVLPT's targets start from their source prompt: models/experiments/multitask.py's SourcePrompt).

Checkpoints live under workspace/initialisations/<name>/prompt_checkpoint/ (`initialisation_dir`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from models.experiments.multitask import SourcePrompt, stored_prompt

if TYPE_CHECKING:
    from models.catalog.initialisations import InitialisationEntry
    from models.prompting.upstream import UpstreamData
    from models.workspace import Workspace

# The prompt text of caption classes for prompt types that read templates (VPT): the subject captions are phrases
UPSTREAM_TEMPLATES = ("{}.",)
_BATCH = 256


def initialisation_dir(workspace: Workspace, name: str) -> Path:
    return workspace.root / "initialisations" / name / "prompt_checkpoint"


def upstream_data(corpus_dir: Path, backbone, entry: InitialisationEntry) -> UpstreamData:
    """The corpus' first entry.corpus_pairs pairs (all: None) labelled by their subject captions, as cached image
    features or preprocessed images (as the entry's prompt type takes), with GRAM's k-means domains on the frozen
    towers' image and full-caption features (PVP: one domain)."""
    from PIL import Image

    from models.embedded.corpus import load_corpus, load_subject_captions
    from models.prompting.methods import get_method
    from models.prompting.methods.gram import GRAMMetaSchedule
    from models.prompting.upstream import UpstreamData, caption_labels, cross_modal_domains

    images, captions = load_corpus(corpus_dir)
    pairs = len(images) if entry.corpus_pairs is None else min(entry.corpus_pairs, len(images))
    labels, classnames = caption_labels(load_subject_captions(corpus_dir)[:pairs])
    pixels = torch.stack([backbone.preprocess_eval(Image.fromarray(image)) for image in images[:pairs]])
    model, device = backbone.model, backbone.device
    with torch.no_grad():
        features = torch.cat([model.encode_image(pixels[i:i + _BATCH].to(device)).float().cpu()
                              for i in range(0, pairs, _BATCH)])
        domains = torch.zeros(pairs, dtype=torch.int64)
        if entry.kind == "gram":
            text = torch.cat([model.encode_text(backbone.tokenizer(captions[i:min(i + _BATCH, pairs)]).to(device)).float().cpu()
                              for i in range(0, pairs, _BATCH)])
            domains = cross_modal_domains(features, text, GRAMMetaSchedule(**entry.meta).n_domains, entry.seed)
    inputs = features if get_method(entry.method).frozen_image_encoder else pixels
    return UpstreamData(inputs, labels, classnames, domains)


def train_initialisation(entry: InitialisationEntry, corpus_dir: Path, backbone,
                         log: Callable[[str], None] = lambda message: None) -> tuple[dict[str, torch.Tensor],
                                                                                    dict[str, Any]]:
    """(state, record) of one initialisation: GRAM meta-trains the prompt and psi, PVP pre-trains the prompt."""
    from models.experiments.classifiers import build_classifier
    from models.prompting.methods.gram import GRAMMetaSchedule, meta_train
    from models.prompting.methods.pvp import pretrain
    from models.prompting.training import OptimizationConfig

    torch.manual_seed(entry.seed)
    data = upstream_data(corpus_dir, backbone, entry)
    classifier = build_classifier(backbone.model, backbone.tokenizer, entry.method, entry.parameters,
                                  list(data.classnames), list(UPSTREAM_TEMPLATES))
    log(f"{entry.kind} initialisation {entry.name}: {len(data.labels)} pairs, {len(data.classnames)} caption "
        f"classes, {data.n_domains} domains")
    if entry.kind == "gram":
        result = meta_train(classifier, data, GRAMMetaSchedule(**entry.meta), entry.seed, device=backbone.device,
                            on_step=lambda step, loss: log(f"meta step {step}: query loss {loss:.4f}"))
        state, losses = result.state, {"query_losses": result.query_losses, "support_losses": result.support_losses}
    else:
        schedule = {key: value for key, value in entry.optimization.items()
                    if key not in ("epochs_by_shots", "iterations_per_shot")}
        history = pretrain(classifier, data, OptimizationConfig(**{**schedule, "seed": entry.seed,
                                                                   "experiment": entry.name}),
                           device=backbone.device)
        state, losses = classifier.trainable_state(), {"epoch_losses": history.epoch_losses}
    record = {"initialisation": entry.as_dict(), "method": entry.method, "parameters": entry.parameters,
              "backbone": backbone.spec.name, "backbone_weights_sha256": backbone.weights_sha256,
              "pairs": len(data.labels), "caption_classes": len(data.classnames), "domains": data.n_domains,
              "domain_sizes": torch.bincount(data.domains).tolist(), **losses}
    return state, record


def save_initialisation(directory: Path, state: dict[str, torch.Tensor], record: dict[str, Any]) -> Path:
    """The state and its record in `directory`, replaced all or nothing."""
    from safetensors.torch import save_file

    from models.atomic import atomic_directory
    from models.experiments.checkpoints import CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS

    with atomic_directory(Path(directory)) as staging:
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(staging / CHECKPOINT_WEIGHTS))
        (staging / CHECKPOINT_CONFIG).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return Path(directory)


def initialisation_prompt(directory: Path, method: str, parameters: dict[str, Any]) -> SourcePrompt:
    """The stored initialisation in `directory` for an experiment of `method` with `parameters` (stored_prompt)."""
    return stored_prompt(directory, method, parameters, "upstream initialisation",
                         "materialise prompt_initialisations first", lambda config: config["initialisation"])


def initialisation_start(catalog, workspace: Workspace, experiment_key: str) -> SourcePrompt | None:
    """The stored initialisation an experiment names (catalog `initialisations:`); None for every other one."""
    entry = catalog.initialisations.of(experiment_key)
    if entry is None:
        return None
    experiment = catalog.experiment(experiment_key)
    return initialisation_prompt(initialisation_dir(workspace, entry.name), experiment.method,
                                 experiment.parameters)


__all__ = ["initialisation_dir", "initialisation_prompt", "initialisation_start", "save_initialisation",
           "train_initialisation", "upstream_data"]
