"""Scoring a learned prompt: its probabilities on a test split, split into all classes, base and new (each among its
own classes) and TRZSL's seen and unseen (`evaluation_predictions`); the rows an evaluation run writes
(`evaluation_scores`); and a prompt learned on another dataset scored on a target's classes
(`transferred_prompt_scores`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch

from models.experiments.checkpoints import load_prompt_checkpoint
from models.experiments.inputs import ExperimentInputs, method_inputs_for_images
from models.prompting.methods.registry import PromptedClassifier
from models.prompting.training import predict_logits, predict_probabilities

if TYPE_CHECKING:
    from models.evaluation.metrics import ClassificationMetrics
    from models.workspace import Workspace


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
                                                    text_cache=text_cache,
                                                    class_descriptions=inputs.dataset.class_descriptions)
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
