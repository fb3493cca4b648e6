"""Training one experiment (`train_experiment`): on its few-shot subset, or, with a learning setting, pseudolabels or
a method that adapts from the pool (`trains_from_pool`), through the rounds of models/limited_labels.py
(`train_from_pool`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import polars as pl
import torch

from models.catalog import ExperimentConfig
from models.experiments.checkpoints import checkpoint_config
from models.experiments.classifiers import build_classifier
from models.experiments.inputs import ExperimentInputs
from models.experiments.training_sets import (TrainingSet, fewshot_training_set, pool_validation_rows,
                                              trained_labels)
from models.prompting.methods import get_method
from models.prompting.methods.registry import PromptedClassifier
from models.prompting.training import OptimizationConfig, TrainingHistory, train_prompt_parameters

if TYPE_CHECKING:
    from models.limited_labels import LimitedLabelResult
    from models.workspace import Workspace


def optimization_config(experiment: ExperimentConfig) -> OptimizationConfig:
    """The catalog's optimization settings for this experiment; epochs may depend on the number of shots."""
    settings = dict(experiment.optimization)
    epochs_by_shots = settings.pop("epochs_by_shots", None) or {}
    iterations_per_shot = settings.pop("iterations_per_shot", None)
    if iterations_per_shot is not None:
        # a fixed number of steps (CLIP-LoRA: 500 per shot); the loop runs as many epochs as they take
        if experiment.shots is None:
            raise ValueError(f"{experiment.key}: iterations_per_shot needs shots")
        settings["steps"] = int(iterations_per_shot) * experiment.shots
        settings.setdefault("epochs", 0)
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
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


def train_prompts(
    classifier: PromptedClassifier,
    training_set: TrainingSet,
    optimization: OptimizationConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
    device: str | torch.device = "cpu",
) -> TrainingHistory:
    torch.manual_seed(optimization.seed)
    if not classifier.trained_by_gradient:
        return classifier.fit(training_set, optimization, on_epoch=on_epoch)
    return train_prompt_parameters(
        classifier,
        training_set.view_inputs,
        training_set.labels,
        optimization,
        sample_weights=training_set.sample_weights,
        on_epoch=on_epoch,
        device=device,
        # the loop selects the epoch on it; with the `last` policy there is none
        validation=training_set.validation if training_set.selection != "last" else None,
    )


def selection_record(training_set: TrainingSet, history: TrainingHistory) -> dict:
    """How the experiment's epoch or hyperparameters were chosen, for its checkpoint config and lineage: the policy
    asked for and the one in force (they differ where the dataset has no val split), the number of val images, and
    the epoch kept by the loop (a closed-form method records its own choice in training_details)."""
    record = {"policy": training_set.selection, "asked": training_set.selection_asked,
              "validation_images": 0 if training_set.validation is None else int(training_set.validation[1].shape[0])}
    if "selected_epoch" in history.details:
        record["selected_epoch"] = history.details["selected_epoch"]
    return record


def trains_from_pool(experiment: ExperimentConfig) -> bool:
    """Whether the experiment trains through models.limited_labels (a learning setting, pseudolabel rounds, or a
    method that adapts from the unlabelled pool) rather than on its few-shot subset alone."""
    return (experiment.setting is not None or experiment.pseudolabels is not None
            or get_method(experiment.method).adapts_from_pool)


def epoch_logger(epochs: int, log: Callable[[str], None]) -> Callable[[int, float, float], None]:
    """An on_epoch callback logging loss, train accuracy, time elapsed and left. Its clock restarts after the last
    epoch, so that each pseudolabel round (whose epochs count from 1 again) is timed on its own."""
    from models.backbones.training_support import format_duration

    started = time.perf_counter()

    def log_epoch(epoch: int, loss: float, accuracy: float) -> None:
        nonlocal started
        elapsed = time.perf_counter() - started
        if epochs <= 0:  # a run of a fixed number of steps: its epoch count is the loop's
            log(f"epoch {epoch}: loss {loss:.4f}, train accuracy {accuracy:.3f}, {format_duration(elapsed)} elapsed")
            return
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
                     log: Callable[[str], None] = lambda message: None, start=None) -> TrainedPrompt:
    """The learned prompt of one experiment on one dataset, with its checkpoint config: trained on its few-shot
    subset, or through the pool rounds (trains_from_pool); a method that learns nothing (zero-shot) is built only.
    `text_cache` as in build_classifier; `log` receives progress lines. `start`: the prompt training starts from
    (an MVLPT target's seed-averaged source prompt, models.experiments.multitask.SourcePrompt), recorded in the
    checkpoint config; None: the method's own initialisation."""
    from models.experiments.multitask import started_at

    experiment = inputs.experiment
    labels = trained_labels(experiment, inputs.class_split(workspace), len(inputs.classnames))
    classnames = [inputs.classnames[label] for label in labels]

    def classifier_factory() -> PromptedClassifier:
        return started_at(build_classifier(backbone.model, backbone.tokenizer, experiment.method,
                                           experiment.parameters, classnames, inputs.templates, text_cache=text_cache,
                                           template_groups=inputs.dataset.template_groups,
                                           dataset_classnames=inputs.classnames,
                                           class_descriptions=inputs.dataset.class_descriptions), start)

    classifier = classifier_factory()
    config = checkpoint_config(inputs, backbone, classnames)
    if start is not None:
        config["source_prompt"] = start.record
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
        length = f"{optimization.steps} steps" if optimization.steps else f"{optimization.epochs} epochs"
        log(f"training {experiment.method} on {training_set.composition} for {length}, selection "
            f"{training_set.selection}")
        history = train_prompts(classifier, training_set, optimization, on_epoch=on_epoch, device=backbone.device)
        trained = TrainedPrompt(classifier, config, optimization, [history], training_set.composition,
                                history.details)
        config.update(model_selection=selection_record(training_set, history),
                      training_views=(experiment.view_recipe.as_dict() if experiment.view_recipe is not None
                                      else "original and mirrored"))
    config.update(optimization=optimization.__dict__, training_composition=trained.composition,
                  epoch_losses=trained.epoch_losses, training_seconds=trained.training_seconds,
                  training_details=trained.details)
    return trained
