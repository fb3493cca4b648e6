"""Train and evaluate one experiment (a method on a dataset with shots, seed and options), without Dagster.

The Dagster assets call these functions; so can a notebook or a script. One function per decision: the labels an
experiment trains on (`trained_labels`), its training set (`fewshot_training_set`, or the pool rounds of
`train_from_pool`), the config saved with its prompt (`checkpoint_config`), which of the two it trains by
(`trains_from_pool`), and how a learned prompt is scored in-domain (`evaluation_predictions`, `evaluation_scores`) and
on another dataset (`transferred_prompt_scores`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import polars as pl
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from models.atomic import atomic_directory
from models.catalog import DatasetEntry, ExperimentConfig
from models.prompting.methods import get_method, parse_method_parameters
from models.prompting.methods.registry import ClassifierContext, PromptedClassifier
from models.prompting.training import (OptimizationConfig, TrainingHistory, predict_logits, predict_probabilities,
                                      train_prompt_parameters)

if TYPE_CHECKING:
    from models.evaluation.metrics import ClassificationMetrics
    from models.limited_labels import ExperimentRows, LimitedLabelResult
    from models.prompting.features import ImageSet
    from models.pseudolabels import PseudolabelStrategy
    from models.workspace import Workspace

CHECKPOINT_CONFIG = "prompt_config.json"
CHECKPOINT_WEIGHTS = "prompt_parameters.safetensors"
# Every round's pseudolabels (round, per_class, relative_path, pseudo_label, confidence) of a pseudolabel strategy.
CHECKPOINT_PSEUDOLABEL_ROUNDS = "pseudolabel_rounds.parquet"


@dataclass
class ExperimentInputs:
    """The curated inputs of one experiment on one dataset: their catalog entries, the dataset's validated index and
    class names, and the folder the index's relative paths start from."""

    dataset: DatasetEntry
    experiment: ExperimentConfig
    index: pl.DataFrame
    classnames: list[str]
    image_dir: Path

    @cached_property
    def image_set(self) -> ImageSet:
        """The dataset's images as one ImageSet, batched within each split: the features of any subset are computed
        in its canonical batches, so every experiment reads the same bits (models.prompting.features)."""
        from models.prompting.features import ImageSet

        return ImageSet.of_index(self.image_dir, self.index)

    @property
    def templates(self) -> list[str]:
        return self.experiment.templates_for(self.dataset)

    def fewshot_train(self, fewshot: pl.DataFrame, subset: str = "train") -> pl.DataFrame:
        """The labelled few-shot rows (subset train, or val: min(K, 4) per class) of this experiment, joined
        with the index (content hashes)."""
        from models.data.fewshot import fewshot_rows

        return fewshot_rows(fewshot, self.index, self.experiment.shots, self.experiment.seed, subset,
                            self.dataset.name)

    def experiment_rows(self, workspace: Workspace) -> ExperimentRows:
        """The labelled, validation and pool rows of this experiment (models.limited_labels.experiment_rows), from
        its learning setting's curated split or its few-shot subset."""
        from models.limited_labels import experiment_rows
        from models.storage import read_parquet_file

        fewshot = (read_parquet_file(workspace.fewshot_path(self.dataset.name)) if self.experiment.setting is None
                   else None)
        splits = (read_parquet_file(workspace.setting_splits_path(self.dataset.name))
                  if self.experiment.setting is not None else None)
        return experiment_rows(self.experiment, self.index, len(self.classnames), fewshot, splits)

    def class_split(self, workspace: Workspace) -> dict[str, Any]:
        """The dataset's curated class split: classnames, base_labels, new_labels."""
        return json.loads(workspace.class_split_path(self.dataset.name).read_text())

    def test_rows(self) -> pl.DataFrame:
        return self.index.filter(pl.col("split") == "test").sort("relative_path")


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


# ------------------------------------------------------------------------------------------ training an experiment
def trained_labels(experiment: ExperimentConfig, class_split: dict[str, Any], num_classes: int) -> list[int]:
    """The labels an experiment trains on, in the order training relabels them 0..len-1: base_to_new trains on the
    base classes only (new classes are never seen in training), every other protocol on all classes."""
    return class_split["base_labels"] if experiment.protocol == "base_to_new" else list(range(num_classes))


def trains_from_pool(experiment: ExperimentConfig) -> bool:
    """Whether the experiment trains through models.limited_labels (a learning setting, pseudolabel rounds, or a
    method that adapts from the unlabelled pool) rather than on its few-shot subset alone."""
    return (experiment.setting is not None or experiment.pseudolabels is not None
            or get_method(experiment.method).adapts_from_pool)


def checkpoint_config(inputs: ExperimentInputs, backbone, classnames: list[str]) -> dict[str, Any]:
    """The record saved beside a learned prompt: what rebuilds its classifier (method, parameters, class names,
    templates) and what it was learned from (experiment, data, backbone weights, library code); training adds how it
    trained (train_experiment)."""
    from models.data.index import dataset_fingerprint
    from models.provenance import library_code_version

    experiment = inputs.experiment
    return {
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


def augmented_rows(inputs: ExperimentInputs, workspace: Workspace) -> tuple[Path | None, pl.DataFrame | None]:
    """(folder, kept rows) of the experiment's diffusion variations (the augmented_images asset), or (None, None)
    for an experiment without augmentation."""
    from models.storage import read_parquet_file

    if inputs.experiment.augmentation is None:
        return None, None
    augmented_dir = workspace.augmentation_dir(inputs.dataset.name, inputs.experiment.key)
    return augmented_dir, read_parquet_file(augmented_dir / "augmented.parquet").filter(pl.col("kept"))


def fewshot_training_set(inputs: ExperimentInputs, workspace: Workspace, backbone, labels: list[int]) -> TrainingSet:
    """An experiment's few-shot train images and their kept augmented variations, with its few-shot val images as
    validation, restricted to `labels` and relabelled (assemble_training_set)."""
    from models.storage import read_parquet_file

    fewshot = read_parquet_file(workspace.fewshot_path(inputs.dataset.name))
    return assemble_training_set(inputs.experiment.method, backbone, inputs.image_set, inputs.fewshot_train(fewshot),
                                 inputs.fewshot_train(fewshot, subset="val"), labels, workspace.feature_cache_dir,
                                 *augmented_rows(inputs, workspace))


def pool_validation_rows(inputs: ExperimentInputs, rows: ExperimentRows) -> pl.DataFrame | None:
    """The labelled images a method that adapts from the pool selects its epoch on when the setting has none (UL):
    the dataset's val split (TFUP-T's authors select on test). None otherwise: the setting's own validation rows."""
    if not get_method(inputs.experiment.method).adapts_from_pool or rows.validation.height:
        return None
    return inputs.index.filter(pl.col("split") == "val").select(
        "relative_path", "label", "content_sha256").sort("label", "relative_path")


def epoch_logger(epochs: int, log: Callable[[str], None]) -> Callable[[int, float, float], None]:
    """An on_epoch callback logging loss, train accuracy, time elapsed and left. Its clock restarts after the last
    epoch, so that each pseudolabel round (whose epochs count from 1 again) is timed on its own."""
    from models.backbones.training_support import format_duration

    started = time.perf_counter()

    def log_epoch(epoch: int, loss: float, accuracy: float) -> None:
        nonlocal started
        elapsed = time.perf_counter() - started
        left = elapsed / epoch * (epochs - epoch)
        log(f"epoch {epoch}/{epochs}: loss {loss:.4f}, train accuracy {accuracy:.3f}, "
            f"{format_duration(elapsed)} elapsed, about {format_duration(left)} left")
        if epoch == epochs:
            started = time.perf_counter()

    return log_epoch


def train_from_pool(inputs: ExperimentInputs, workspace: Workspace, backbone,
                    classifier_factory: Callable[[], PromptedClassifier], optimization: OptimizationConfig,
                    on_epoch: Callable[[int, float, float], None],
                    log: Callable[[str], None]) -> LimitedLabelResult:
    """An experiment with a pool or a learning setting (models.limited_labels): rounds of pseudolabels from the
    pseudolabels asset's round 0, a method that adapts from the pool (TFUP), or a setting's labelled images alone;
    each round logged."""
    from models.limited_labels import limited_label_inputs, train_limited_label_experiment
    from models.storage import read_parquet_file

    experiment = inputs.experiment
    rows = inputs.experiment_rows(workspace)
    limited = limited_label_inputs(experiment.method, backbone, inputs.image_set, rows, workspace.feature_cache_dir,
                                   pool_validation_rows(inputs, rows))
    initial = None
    if experiment.pseudolabels is not None:
        initial = read_parquet_file(workspace.pseudolabels_path(inputs.dataset.name, experiment.key))

    def train(classifier, training_set, after_epoch):
        log(f"training {experiment.method} on {training_set.composition} for {optimization.epochs} epochs")

        def each_epoch(epoch: int, loss: float, accuracy: float) -> None:
            on_epoch(epoch, loss, accuracy)
            if after_epoch is not None:
                after_epoch(epoch)

        return train_prompts(classifier, training_set, optimization, on_epoch=each_epoch, device=backbone.device)

    def on_round(step) -> None:
        quality = step.quality
        log(f"round {step.round + 1}: K = {step.per_class} per class, {int(quality['num_pseudolabels'])} "
            f"pseudolabels, accuracy {quality['pseudolabel_accuracy']:.3f}, coverage {quality['class_coverage']:.2f}; "
            f"kept epoch {step.selected_epoch or 'last'}")

    return train_limited_label_experiment(experiment, get_method(experiment.method).adapts_from_pool,
                                          classifier_factory, limited, rows, initial, train, on_round)


@dataclass
class TrainedPrompt:
    """A learned prompt with the config that rebuilds it and, for a method that trains, how it trained (one history
    per pseudolabel round, or one)."""

    classifier: PromptedClassifier
    config: dict[str, Any]
    optimization: OptimizationConfig | None = None
    histories: list[TrainingHistory] = field(default_factory=list)
    composition: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    pseudolabelling: Any = None  # models.limited_labels.PseudolabelTraining: every round of a pseudolabel strategy

    @property
    def epoch_losses(self) -> list[float]:
        return [loss for history in self.histories for loss in history.epoch_losses]

    @property
    def epoch_accuracies(self) -> list[float]:
        return [accuracy for history in self.histories for accuracy in history.epoch_accuracies]

    @property
    def training_seconds(self) -> float:
        return sum(history.seconds for history in self.histories)

    def pseudolabel_rounds(self) -> pl.DataFrame | None:
        return self.pseudolabelling.rounds_frame() if self.pseudolabelling is not None else None


def train_experiment(inputs: ExperimentInputs, workspace: Workspace, backbone, text_cache=None,
                     log: Callable[[str], None] = lambda message: None) -> TrainedPrompt:
    """The learned prompt of one experiment on one dataset, with its checkpoint config: trained on its few-shot
    subset, or through the pool rounds (trains_from_pool); a method that learns nothing (zero-shot) is built only.
    `text_cache` as in build_classifier; `log` receives progress lines."""
    experiment = inputs.experiment
    labels = trained_labels(experiment, inputs.class_split(workspace), len(inputs.classnames))
    classnames = [inputs.classnames[label] for label in labels]

    def classifier_factory() -> PromptedClassifier:
        return build_classifier(backbone.model, backbone.tokenizer, experiment.method, experiment.parameters,
                                classnames, inputs.templates, text_cache=text_cache)

    classifier = classifier_factory()
    config = checkpoint_config(inputs, backbone, classnames)
    if not get_method(experiment.method).trains_prompts:
        return TrainedPrompt(classifier, config)
    optimization = optimization_config(experiment)
    on_epoch = epoch_logger(optimization.epochs, log)
    if trains_from_pool(experiment):
        result = train_from_pool(inputs, workspace, backbone, classifier_factory, optimization, on_epoch, log)
        trained = TrainedPrompt(result.classifier, config, optimization, result.histories, result.composition,
                                {**result.details, **result.histories[-1].details}, result.pseudolabelling)
        if trained.pseudolabelling is not None:
            config["pseudolabel_rounds"] = trained.pseudolabelling.quality_frame().to_dicts()
    else:
        training_set = fewshot_training_set(inputs, workspace, backbone, labels)
        log(f"training {experiment.method} on {training_set.composition} for {optimization.epochs} epochs")
        history = train_prompts(classifier, training_set, optimization, on_epoch=on_epoch, device=backbone.device)
        trained = TrainedPrompt(classifier, config, optimization, [history], training_set.composition,
                                history.details)
    config.update(optimization=optimization.__dict__, training_composition=trained.composition,
                  epoch_losses=trained.epoch_losses, training_seconds=trained.training_seconds,
                  training_details=trained.details)
    return trained


# ------------------------------------------------------------------------------------ scoring a learned prompt
def checkpoint_test_predictions(checkpoint_dir: Path, inputs: ExperimentInputs, workspace: Workspace, backbone,
                                templates: list[str] | None = None,
                                text_cache=None) -> tuple[dict[str, Any], np.ndarray, pl.DataFrame]:
    """(checkpoint config, log-probabilities among all of `inputs`' classes, the test rows in that order) of the
    learned prompt in `checkpoint_dir` on the test split of `inputs`' dataset, its classes and, when given,
    `templates` (load_prompt_checkpoint). Frozen-image-tower methods read cached features, the others preprocessed
    images."""
    classifier, checkpoint = load_prompt_checkpoint(checkpoint_dir, backbone.model, backbone.tokenizer,
                                                    classnames=inputs.classnames, templates=templates,
                                                    backbone_weights_sha256=backbone.weights_sha256,
                                                    text_cache=text_cache)
    test = inputs.test_rows()
    image_inputs = method_inputs_for_images(checkpoint["method"], backbone, inputs.image_set,
                                            test["relative_path"].to_list(), test["content_sha256"].to_list(),
                                            workspace.feature_cache_dir)
    return checkpoint, predict_log_probabilities(classifier, image_inputs), test


def generalized_labels(inputs: ExperimentInputs, workspace: Workspace) -> dict[str, list[int]] | None:
    """TRZSL's seen and unseen classes (evaluation_splits' `generalized`); None in every other setting."""
    if inputs.experiment.setting != "trzsl":
        return None
    seen = inputs.experiment_rows(workspace).seen_labels
    return {"seen": list(seen), "unseen": [i for i in range(len(inputs.classnames)) if i not in seen]}


def evaluation_predictions(inputs: ExperimentInputs, workspace: Workspace, backbone,
                           text_cache=None) -> tuple[dict[str, Any], list[SplitPredictions]]:
    """(checkpoint config, evaluation splits) of an experiment's learned prompt on its dataset's test split: all
    classes, base and new each among their own classes, and TRZSL's seen and unseen among all."""
    checkpoint, log_probabilities, test = checkpoint_test_predictions(
        workspace.checkpoint_dir(inputs.dataset.name, inputs.experiment.key), inputs, workspace, backbone,
        text_cache=text_cache)
    class_split = inputs.class_split(workspace)
    generalized = generalized_labels(inputs, workspace)
    splits = evaluation_splits(log_probabilities, np.asarray(test["label"].to_list()), test["relative_path"].to_list(),
                               inputs.classnames, class_split["base_labels"], class_split["new_labels"], generalized)
    return checkpoint, splits


def pseudolabel_round_rows(checkpoint: dict[str, Any]) -> list:
    """MetricRows (split round_00, round_01, ...) of the pseudolabel quality the checkpoint recorded per round."""
    from models.warehouse import MetricRow

    rows = []
    for entry in checkpoint.get("pseudolabel_rounds") or []:
        split = f"round_{int(entry['round']):02d}"
        rows += [MetricRow(split, name, float(value)) for name, value in entry.items()
                 if name not in ("round", "selected_epoch") and value is not None]
    return rows


@dataclass
class EvaluationScores:
    """What an evaluation run writes to the warehouse (models.warehouse.Warehouse.record_run), and its top-1 per
    split."""

    metric_rows: list
    per_class_rows: list
    predictions: pl.DataFrame
    top1_accuracy: dict[str, float]


def evaluation_scores(run_id: str, dataset: str, splits: list[SplitPredictions],
                      checkpoint: dict[str, Any]) -> EvaluationScores:
    """Top-1, macro F1, ECE and per-class rows of every split; the harmonic means of base and new, and of seen and
    unseen; the pseudolabel quality of each round the checkpoint recorded (so SQL can plot it by round)."""
    from models.evaluation.metrics import classification_metrics, harmonic_mean
    from models.warehouse import MetricRow, PerClassRow

    metric_rows, per_class_rows, predictions, top1 = [], [], [], {}
    for split in splits:
        result = classification_metrics(split.probabilities, split.labels, split.classnames)
        top1[split.split] = result.top1_accuracy
        metric_rows += [MetricRow(split.split, "top1_accuracy", result.top1_accuracy),
                        MetricRow(split.split, "macro_f1", result.macro_f1),
                        MetricRow(split.split, "expected_calibration_error", result.expected_calibration_error)]
        per_class_rows += [PerClassRow(split.split, split.label_map[row.label], row.classname, row.accuracy,
                                       row.f1, row.support) for row in result.per_class]
        predictions.append(predictions_frame(run_id, dataset, split))
    for one, other in (("base", "new"), ("seen", "unseen")):
        if one in top1 and other in top1:
            metric_rows.append(MetricRow(f"{one}_{other}", "harmonic_mean", harmonic_mean(top1[one], top1[other])))
    metric_rows += pseudolabel_round_rows(checkpoint)
    return EvaluationScores(metric_rows, per_class_rows, pl.concat(predictions), top1)


def transferred_prompt_scores(checkpoint_dir: Path, inputs: ExperimentInputs, workspace: Workspace, backbone,
                              text_cache=None) -> tuple[dict[str, Any], SplitPredictions, ClassificationMetrics]:
    """(checkpoint config, test split, its metrics) of a prompt learned on another dataset, applied to `inputs`'
    class names and, where a method uses hand-crafted templates at prediction time, its templates; a class-specific
    state fails here, clearly."""
    from models.evaluation.metrics import classification_metrics

    checkpoint, log_probabilities, test = checkpoint_test_predictions(checkpoint_dir, inputs, workspace, backbone,
                                                                      inputs.templates, text_cache)
    (split,) = evaluation_splits(log_probabilities, np.asarray(test["label"].to_list()),
                                 test["relative_path"].to_list(), inputs.classnames, None, None)
    return checkpoint, split, classification_metrics(split.probabilities, split.labels, split.classnames)


# ------------------------------------------------------------------------- what an experiment prepares to train on
@dataclass
class RoundZeroPseudolabels:
    selected: pl.DataFrame  # relative_path, pseudo_label, confidence (models.limited_labels.round_zero_selection)
    pool: pl.DataFrame  # the unlabelled pool's rows, with their true labels (for the quality only)
    quality: dict[str, float]  # models.pseudolabels.pseudolabel_quality
    strategy: PseudolabelStrategy


def round_zero_pseudolabels(inputs: ExperimentInputs, workspace: Workspace, backbone,
                            text_cache=None) -> RoundZeroPseudolabels:
    """Round 0 of the experiment's pseudolabel strategy: zero-shot CLIP (the experiment's templates) labels its
    unlabelled pool and the strategy keeps K_0 per class. Refused, naming the grid entry, when the pool is empty or
    holds fewer images than K asks (before any training)."""
    from models.limited_labels import round_zero_selection
    from models.pseudolabels import get_strategy, pseudolabel_quality

    experiment, dataset = inputs.experiment, inputs.dataset.name
    rows = inputs.experiment_rows(workspace)
    pool, strategy = rows.pool, get_strategy(experiment.pseudolabels.strategy)
    where = f"{experiment.where}.pseudolabels"
    if pool is None or pool.height == 0:
        raise ValueError(f"{where}: the unlabelled pool of {dataset} is empty ({experiment.setting or 'few-shot'}"
                         "): there is nothing to pseudolabel")
    features = features_for_images(backbone, inputs.image_set, pool["relative_path"].to_list(),
                                   pool["content_sha256"].to_list(), workspace.feature_cache_dir)
    classifier = build_classifier(backbone.model, backbone.tokenizer, "zero_shot", {}, inputs.classnames,
                                  inputs.templates, text_cache=text_cache)
    try:
        selected = round_zero_selection(strategy, experiment.pseudolabels.per_class, pool["relative_path"].to_list(),
                                        predict(classifier, features), rows.pseudolabel_classes)
    except ValueError as error:  # K beyond the pool: name the grid entry and field
        raise ValueError(f"{where}.per_class ({dataset}): {error}") from error
    return RoundZeroPseudolabels(selected, pool, pseudolabel_quality(selected, pool, len(rows.pseudolabel_classes)),
                                 strategy)


def augment_fewshot_images(inputs: ExperimentInputs, workspace: Workspace, backbone, generator) -> pl.DataFrame:
    """The experiment's diffusion variations of its few-shot train images (its augmentation options), each with its
    CLIP similarity to the source and whether it passes the threshold; the images and their table
    (augmented.parquet) are written to a staging folder renamed to the experiment's augmentation folder once
    complete."""
    import shutil

    from models.augmentation import AugmentationSettings, augment_with_diffusion
    from models.data.index import load_images
    from models.storage import read_parquet_file

    options, dataset = inputs.experiment.augmentation, inputs.dataset.name
    output_dir = workspace.augmentation_dir(dataset, inputs.experiment.key)
    rows = inputs.fewshot_train(read_parquet_file(workspace.fewshot_path(dataset)))
    paths = rows["relative_path"].to_list()
    staging = output_dir.with_name(output_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    table = augment_with_diffusion(
        generator,
        backbone.model,
        backbone.preprocess_eval,
        load_images(inputs.image_dir, paths),
        paths,
        rows["label"].to_list(),
        rows["content_sha256"].to_list(),
        AugmentationSettings(options.variations_per_image, options.similarity_threshold, inputs.experiment.seed or 0),
        staging,
        device=backbone.device,
    )
    table.write_parquet(staging / "augmented.parquet")
    staging.rename(output_dir)
    return table
