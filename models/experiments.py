"""Train and evaluate one experiment (a method on a dataset with shots, seed and options), without Dagster.

The Dagster assets call these functions; so can a notebook or a script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import polars as pl
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from models.atomic import atomic_directory
from models.catalog import ExperimentConfig
from models.prompting.methods import get_method, parse_method_parameters
from models.prompting.methods.registry import ClassifierContext, PromptedClassifier
from models.prompting.training import (OptimizationConfig, TrainingHistory, predict_logits, predict_probabilities,
                                      train_prompt_parameters)

if TYPE_CHECKING:
    from models.prompting.features import ImageSet
    from models.pseudolabels import PseudolabelStrategy

CHECKPOINT_CONFIG = "prompt_config.json"
CHECKPOINT_WEIGHTS = "prompt_parameters.safetensors"
# Every round's pseudolabels (round, per_class, relative_path, pseudo_label, confidence) of a pseudolabel strategy.
CHECKPOINT_PSEUDOLABEL_ROUNDS = "pseudolabel_rounds.parquet"


def optimization_config(experiment: ExperimentConfig) -> OptimizationConfig:
    """The catalog's optimization settings for this experiment; epochs may depend on the number of shots."""
    settings = dict(experiment.optimization)
    epochs_by_shots = settings.pop("epochs_by_shots", None) or {}
    if "epochs" not in settings and experiment.shots is not None:
        by_shots = {int(k): int(v) for k, v in epochs_by_shots.items()}
        if experiment.shots not in by_shots:
            raise ValueError(f"{experiment.key}: no epochs given for {experiment.shots} shots (epochs_by_shots)")
        settings["epochs"] = by_shots[experiment.shots]
    known = set(OptimizationConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{experiment.key}: unknown optimization setting(s) {unknown}; known: {sorted(known)}")
    return OptimizationConfig(**{**settings, "seed": experiment.seed or 1, "experiment": experiment.key})


def build_classifier(
    clip_model: torch.nn.Module,
    tokenizer,
    method: str,
    parameters: dict[str, Any],
    classnames: list[str],
    templates: list[str],
    text_cache=None,
) -> PromptedClassifier:
    """The method's classifier on the frozen model; `text_cache` (models.prompting.text_cache.TextFeatureCache)
    serves the zero-shot template ensemble the method reads, encoded once per class names and templates."""
    spec = get_method(method)
    context = ClassifierContext(clip_model, tokenizer, classnames, templates, text_cache=text_cache)
    return spec.build(context, parse_method_parameters(method, parameters))


class MethodNotApplicableError(ValueError):
    """An experiment's method cannot run on the backbone in use (raised before any work starts)."""


def check_method_applies(backbone, method: str, parameters: dict[str, Any], classnames: list[str],
                         templates: list[str]) -> None:
    """Build the method's classifier on the loaded backbone and discard it, so that a method that cannot hook into
    it (vision prompts on a ResNet image tower, a prompt depth beyond the tower's layers, a parameter the method
    refuses) fails with the reason before augmentation, pseudolabelling or training spend any time."""
    try:
        build_classifier(backbone.model, backbone.tokenizer, method, parameters, classnames, templates)
    except ValueError as error:  # UnsupportedBackboneError and parameter checks are ValueErrors
        raise MethodNotApplicableError(
            f"{method} cannot run on backbone {backbone.spec.name!r}: {error}") from error


@dataclass
class TrainingSet:
    """Inputs of the training images (features (N, V, E) or images (N, V, 3, H, W)), labels, per-sample loss
    weights, and the few-shot val subset (inputs, labels) for methods that select hyperparameters on it."""

    view_inputs: torch.Tensor
    labels: torch.Tensor
    sample_weights: torch.Tensor | None = None
    composition: dict[str, int] = field(default_factory=dict)
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    # The unlabelled pool's inputs (same layout as view_inputs, without labels), for methods that adapt from the
    # pool itself (TFUP); None outside the limited-label settings.
    unlabelled: torch.Tensor | None = None


def combine_training_sets(
    labelled: tuple[torch.Tensor, torch.Tensor],
    augmented: tuple[torch.Tensor, torch.Tensor] | None = None,
    pseudolabelled: tuple[torch.Tensor, torch.Tensor] | None = None,
    strategy: str | PseudolabelStrategy = "fpl",
) -> TrainingSet:
    """Few-shot images, plus their kept diffusion variations (same labels), plus pseudolabelled pool images.

    The labelled term is weighted as the pseudolabel strategy publishes it (models/pseudolabels.py): FPL scales it by
    |PL|/|L|, IFPL and GRIP by |L|/|PL|; each pseudolabelled image has weight 1. A strategy object (get_strategy with
    the experiment's `labelled_weighting`) carries a weighting chosen in the grid instead.
    """
    from models.pseudolabels import get_strategy

    parts_features, parts_labels, parts_weights = [], [], []
    composition = {}
    for name, part in (("labelled", labelled), ("augmented", augmented)):
        if part is not None and part[0].shape[0]:
            parts_features.append(part[0])
            parts_labels.append(part[1])
            composition[name] = part[0].shape[0]
    n_labelled = sum(f.shape[0] for f in parts_features)
    weights = None
    if pseudolabelled is not None and pseudolabelled[0].shape[0]:
        n_pseudo = pseudolabelled[0].shape[0]
        strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
        labelled_weight = strategy.labelled_loss_weight(n_labelled, n_pseudo)
        parts_weights = [torch.full((n_labelled,), labelled_weight), torch.ones(n_pseudo)]
        parts_features.append(pseudolabelled[0])
        parts_labels.append(pseudolabelled[1])
        composition["pseudolabelled"] = n_pseudo
        weights = torch.cat(parts_weights)
    return TrainingSet(torch.cat(parts_features), torch.cat(parts_labels).long(), weights, composition)


def assemble_training_set(
    method: str,
    backbone,
    image_dir: ImageSet | Path,
    labelled_rows: pl.DataFrame,
    val_rows: pl.DataFrame,
    trained_labels: list[int],
    cache_dir: Path | None,
    augmented_dir: Path | None = None,
    augmented_rows: pl.DataFrame | None = None,
) -> TrainingSet:
    """The training set of one experiment, in the inputs its method takes (cached features or preprocessed images).

    labelled_rows / val_rows: the labelled images for training and for validation (relative_path, label,
    content_sha256), restricted to `trained_labels` and relabelled 0..len-1 in that order (base-to-new trains on the
    base classes only). augmented_rows: kept diffusion variations under `augmented_dir` (relative_path, label).
    Pseudolabelled pool images join in the rounds of models/limited_labels.py.
    """
    from models.provenance import sha256_file

    relabel = {label: index for index, label in enumerate(trained_labels)}

    def labelled_part(directory: Path, rows: pl.DataFrame, hashes: list[str], label_column: str,
                      with_mirror: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = method_inputs_for_images(method, backbone, directory, rows["relative_path"].to_list(), hashes,
                                          cache_dir, with_mirror)
        return inputs, torch.tensor(rows[label_column].to_list())

    def relabelled(rows: pl.DataFrame) -> pl.DataFrame:
        rows = rows.filter(pl.col("label").is_in(trained_labels))
        return rows.with_columns(pl.col("label").replace_strict(relabel, return_dtype=pl.Int64))

    labelled_rows, val_rows = relabelled(labelled_rows), relabelled(val_rows)
    labelled = labelled_part(image_dir, labelled_rows, labelled_rows["content_sha256"].to_list(), "label")
    augmented = None
    if augmented_rows is not None and augmented_rows.height:
        hashes = [sha256_file(augmented_dir / "images" / path) for path in augmented_rows["relative_path"].to_list()]
        augmented = labelled_part(augmented_dir / "images", augmented_rows, hashes, "label")
    training_set = combine_training_sets(labelled, augmented)
    # the labelled val images (few-shot: min(K, 4) per class), for methods that select hyperparameters on them; none
    # where the dataset's val set is its test set (ImageNet)
    training_set.validation = (labelled_part(image_dir, val_rows, val_rows["content_sha256"].to_list(), "label",
                                             with_mirror=False) if val_rows.height else None)
    return training_set


def train_prompts(
    classifier: PromptedClassifier,
    training_set: TrainingSet,
    optimization: OptimizationConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
    device: str | torch.device = "cpu",
) -> TrainingHistory:
    torch.manual_seed(optimization.seed)
    if not classifier.trained_by_gradient:
        return classifier.fit(training_set, optimization)
    return train_prompt_parameters(
        classifier,
        training_set.view_inputs,
        training_set.labels,
        optimization,
        sample_weights=training_set.sample_weights,
        on_epoch=on_epoch,
        device=device,
    )


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
) -> tuple[PromptedClassifier, dict]:
    """Rebuild a classifier from its checkpoint folder alone (config + learned parameters); `text_cache` as in
    build_classifier.

    `classnames` applies the learned prompt to other classes than it was trained on (new classes in
    base-to-new, another dataset's classes in cross-dataset transfer); class-specific parameters cannot transfer.
    `templates` replaces the hand-crafted templates the classifier was trained with (a transfer target's own), for
    methods that use them at prediction time (zero-shot, VPT's text side); the returned config says which were used.
    """
    config = read_checkpoint_config(directory)
    trained_on = config.get("backbone_weights_sha256")
    if backbone_weights_sha256 is not None and trained_on != backbone_weights_sha256:
        raise ValueError(f"{directory}: the checkpoint was trained on other backbone weights "
                         f"({str(trained_on)[:12]} != {backbone_weights_sha256[:12]}); retrain it")
    target_classnames = classnames if classnames is not None else config["classnames"]
    if templates is not None:
        config = {**config, "trained_templates": config["templates"], "templates": list(templates)}
    classifier = build_classifier(
        clip_model, tokenizer, config["method"], config["parameters"], target_classnames, config["templates"],
        text_cache=text_cache,
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


@dataclass
class SplitPredictions:
    """Probabilities for one evaluation split, restricted to that split's classes and relabelled from 0."""

    split: str
    probabilities: np.ndarray
    labels: np.ndarray
    classnames: list[str]
    relative_paths: list[str]
    label_map: list[int]  # column j of probabilities is original label label_map[j]


def evaluation_splits(
    log_probabilities: np.ndarray,
    labels: np.ndarray,
    relative_paths: list[str],
    classnames: list[str],
    base_labels: list[int] | None,
    new_labels: list[int] | None,
    generalized: dict[str, list[int]] | None = None,
) -> list[SplitPredictions]:
    """All classes ('test'), and when a base/new split applies, base and new each among their own classes;
    `generalized` adds splits of the images of some classes scored among all classes (TRZSL: seen, unseen).

    Takes log-probabilities (`predict_log_probabilities`): a subset's distribution is the softmax of their columns,
    which stays finite when a confident classifier gives every class of the subset a probability that underflows
    to 0 (renormalising such probabilities divides 0 by 0)."""
    probabilities = np.exp(log_probabilities)
    splits = [SplitPredictions("test", probabilities, labels, classnames, relative_paths, list(range(len(classnames))))]
    # Generalized splits (TRZSL's seen and unseen): the test images of those classes, still scored among all
    # classes, as in transductive zero-shot learning (a seen image predicted as an unseen class is wrong).
    for name, subset in (generalized or {}).items():
        mask = np.isin(labels, subset)
        splits.append(SplitPredictions(name, probabilities[mask], labels[mask], classnames,
                                       [p for p, keep in zip(relative_paths, mask) if keep],
                                       list(range(len(classnames)))))
    for name, subset in (("base", base_labels), ("new", new_labels)):
        if not subset:
            continue
        mask = np.isin(labels, subset)
        restricted = log_probabilities[mask][:, subset]
        restricted = np.exp(restricted - restricted.max(axis=1, keepdims=True))
        restricted = restricted / restricted.sum(axis=1, keepdims=True)
        relabel = {old: new for new, old in enumerate(subset)}
        splits.append(
            SplitPredictions(
                name,
                restricted,
                np.array([relabel[int(label)] for label in labels[mask]]),
                [classnames[i] for i in subset],
                [p for p, keep in zip(relative_paths, mask) if keep],
                list(subset),
            )
        )
    return splits


def predict(classifier: PromptedClassifier, image_inputs: torch.Tensor) -> np.ndarray:
    return predict_probabilities(classifier, image_inputs).numpy().astype(np.float64)


def predict_log_probabilities(classifier: PromptedClassifier, image_inputs: torch.Tensor) -> np.ndarray:
    """log softmax of the logits, in float64 (what `evaluation_splits` takes)."""
    return predict_logits(classifier, image_inputs).double().log_softmax(dim=-1).numpy()


def predictions_frame(run_id: str, dataset: str, split: SplitPredictions) -> pl.DataFrame:
    predicted = split.probabilities.argmax(axis=1)
    return pl.DataFrame(
        {
            "run_id": [run_id] * len(split.labels),
            "dataset": [dataset] * len(split.labels),
            "split": [split.split] * len(split.labels),
            "relative_path": split.relative_paths,
            "label": [split.label_map[int(i)] for i in split.labels],
            "predicted_label": [split.label_map[int(i)] for i in predicted],
            "confidence": split.probabilities.max(axis=1).astype(np.float64),
        }
    )


def features_for_images(
    backbone,
    images: ImageSet | Path,
    relative_paths: list[str],
    content_hashes: list[str],
    cache_dir: Path | None,
    with_mirror: bool = False,
) -> torch.Tensor:
    """Image features (N, E), or (N, 2, E) with the mirrored view, through the per-image feature cache.

    `images` is the ImageSet the features are computed in (a dataset's images: every subset then reads the same
    bits; models.prompting.features), or a folder, when the requested images are their own set. Only the canonical
    batches holding images the cache lacks are decoded and encoded, then every image they hold is stored. Without a
    cache_dir the batches holding the requested images are encoded.
    """
    from models.prompting.feature_cache import FeatureCache, FeatureNamespace
    from models.prompting.features import ImageSet, encode_set_batches

    if len(relative_paths) != len(content_hashes):
        raise ValueError(f"{len(relative_paths)} images but {len(content_hashes)} content hashes")
    image_set = images if isinstance(images, ImageSet) else ImageSet.of(images, relative_paths, content_hashes)
    views = ("original", "mirrored") if with_mirror else ("original",)
    cache = FeatureCache(Path(cache_dir)) if cache_dir is not None else None
    per_view = []
    for view in views:
        def encode(missing: list[str], view=view) -> tuple[list[str], torch.Tensor]:
            return encode_set_batches(backbone.model, backbone.preprocess_eval, image_set,
                                      image_set.batches_holding(missing), backbone.device, mirrored=view == "mirrored")

        if cache is None:
            hashes, features = encode(list(dict.fromkeys(content_hashes)))
            row = {content_hash: index for index, content_hash in enumerate(hashes)}
            per_view.append(features[[row[content_hash] for content_hash in content_hashes]])
        else:
            namespace = FeatureNamespace.of(backbone, view, image_set.batching)
            per_view.append(cache.features_by_hash(namespace, content_hashes, encode))
    return torch.stack(per_view, dim=1) if with_mirror else per_view[0]


def preprocessed_images(
    backbone, image_dir: Path, relative_paths: list[str], with_mirror: bool = False
) -> torch.Tensor:
    """Images through the backbone's eval transform, (N, 3, H, W), or (N, 2, 3, H, W) with the mirrored view."""
    from models.data.index import load_images

    images = load_images(image_dir, relative_paths)
    if not images:
        raise ValueError(f"no images to preprocess under {image_dir}")
    views = [[backbone.preprocess_eval(image) for image in images]]
    if with_mirror:
        views.append([backbone.preprocess_eval(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) for image in images])
    stacked = [torch.stack(view) for view in views]
    return torch.stack(stacked, dim=1) if with_mirror else stacked[0]


def method_inputs_for_images(
    method: str,
    backbone,
    images: ImageSet | Path,
    relative_paths: list[str],
    content_hashes: list[str],
    cache_dir: Path | None,
    with_mirror: bool = False,
) -> torch.Tensor:
    """What the method's classifier takes for these images: cached features from the frozen image tower (computed in
    `images`, the dataset's ImageSet, or a folder: see features_for_images), or preprocessed images when the method
    prompts the image tower (they must pass through it at every step)."""
    from models.prompting.features import ImageSet

    if get_method(method).frozen_image_encoder:
        return features_for_images(backbone, images, relative_paths, content_hashes, cache_dir, with_mirror)
    folder = images.image_dir if isinstance(images, ImageSet) else images
    return preprocessed_images(backbone, folder, relative_paths, with_mirror)
