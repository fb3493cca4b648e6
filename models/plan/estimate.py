"""The run plan: every stage `promptlab run` would execute for a selection, counted and priced with measured costs.

Stages, as pipelines/cli.py runs them: curation (images inspected), features (every split's original view and the
training split's mirror through the frozen image tower), each experiment partition's training (epochs x
ceil(samples / batch) steps, or a method's fixed steps, a step priced by what its method runs) and evaluation (its
test split), transfer (the source's checkpoint on every target's test split) and test-time tuning (each test image's
views, then its steps).
Costs are device compute; what is not modelled is listed in the plan's notes.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from models.catalog import Catalog, ExperimentConfig
from models.plan.costs import MeasuredCosts
from models.plan.selection import RunSelection, run_selection
from models.plan.sizes import DatasetSize, dataset_sizes, inspected_images, trained_images_encoded
from models.prompting.methods import get_method, parse_method_parameters
from models.prompting.text_passes import DEFAULT_TEXT_CHUNK_SIZE

DATA, ZERO_SHOT = "data", "zero_shot"  # protocol labels of the shared stages and of the untrained references
PROTOCOL_ORDER = (DATA, ZERO_SHOT, "few_shot", "ssl", "ul", "trzsl", "base_to_new", "transfer", "test_time",
                  "multi_source")
STAGES = ("curation", "features", "training", "evaluation", "transfer", "test_time")
EVALUATION_BATCH = 1024  # images per prediction call (models/prompting/training.py predict_logits)
# The linear probe's lbfgs fits: a fit stops at max_iter or when it converges; large C on separable few-shot data
# runs to max_iter, small C converges in tens of iterations. Priced at this share of max_iter per fit.
LINEAR_PROBE_ITERATION_SHARE = 0.5
# Per lbfgs iteration: the logits (2 n E C operations), the gradient (2 n E C) and about one more function
# evaluation in the line search.
LINEAR_PROBE_OPERATIONS_PER_ITERATION = 6


@dataclass(frozen=True)
class StepShape:
    """What one training step of a method runs beyond the shared loop (read from models/prompting/methods/)."""

    text_pass: bool = True  # its class prompts go through the text tower every step (VPT: frozen text features)
    prompts_per_image: bool = False  # CoCoOp: each image of the batch has its own C prompts (at evaluation too)
    extra_text_backwards: int = 0  # ProGrad: a second backward through the same text graph
    frozen_image_forward: bool = False  # PromptSRC: the unprompted tower's features of each image (its regulariser)
    views_per_image: int = 1  # GOPro: each image and its MoCo v3 and AugMix views, each through both towers
    image_gradient: bool = True  # False: the image tower runs without gradients (GOPro reads its blocks)
    # BlackVIP: no backward at all; each step queries the black box twice per perturbation sample (f(x + c d) and
    # f(x - c d)) on a batch of prompted images, over epochs of max(1, N // batch) steps (Dassl drops the last batch)
    zeroth_order: bool = False
    # NoLA: unlabelled; labels the whole training pool (zero-shot scores and the labeller encoder's features of every
    # pool image, then a small MLP), then trains a prompted image tower on strong views of the whole pool
    whole_pool_student: bool = False


STEP_SHAPES = {
    "cocoop": StepShape(prompts_per_image=True),
    "spg": StepShape(prompts_per_image=True),  # a generated context per image; its training: _Pricer.spg_training
    "blackvip": StepShape(text_pass=False, zeroth_order=True),
    "gopro": StepShape(prompts_per_image=True, views_per_image=3, image_gradient=False),
    "nola": StepShape(text_pass=False, whole_pool_student=True),
    "prograd": StepShape(extra_text_backwards=1),
    "promptsrc": StepShape(frozen_image_forward=True),
    "vpt_deep": StepShape(text_pass=False),
    "vpt_shallow": StepShape(text_pass=False),
    "gram_vpt": StepShape(text_pass=False),  # shallow VPT prompts: frozen text features
    "pvp_vpt": StepShape(text_pass=False),
}


@dataclass(frozen=True)
class PlanRow:
    """One group of work: a stage of one method under one protocol, over some datasets."""

    protocol: str
    stage: str
    method: str | None
    datasets: tuple[str, ...]
    partitions: int
    images: int = 0  # curation: inspected; features: encoded; evaluation/transfer: scored; test-time: test images
    steps: int = 0  # training steps (gradient methods)
    seconds: float = 0.0
    seconds_by_dataset: dict[str, float] = field(default_factory=dict)  # transfer, test-time: by target
    detail: str = ""
    sources: tuple[str, ...] = ()  # transfer, test-time: the datasets the checkpoints were trained on

    def as_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "stage": self.stage, "method": self.method,
                "datasets": list(self.datasets), "partitions": self.partitions, "images": self.images,
                "steps": self.steps, "seconds": round(self.seconds, 3),
                "seconds_by_dataset": {name: round(value, 3) for name, value in self.seconds_by_dataset.items()},
                "detail": self.detail, "sources": list(self.sources)}


@dataclass
class RunPlan:
    suite: str | None
    grid: str
    protocol: str | None
    backbone: str
    costs: MeasuredCosts
    sizes: dict[str, DatasetSize]
    rows: list[PlanRow]
    notes: list[str]
    selection: RunSelection | None = None

    @property
    def total_seconds(self) -> float:
        return sum(row.seconds for row in self.rows)

    def totals_by_protocol(self) -> dict[str, float]:
        return _ordered_totals(self.rows, lambda row: row.protocol)

    def totals_by_method(self) -> dict[str, float]:
        return _ordered_totals([row for row in self.rows if row.method], lambda row: row.method)

    def totals_by_stage(self) -> dict[str, float]:
        return _ordered_totals(self.rows, lambda row: row.stage)

    def partitions_by_protocol(self) -> dict[str, int]:
        """Experiment partitions (training rows, else evaluation rows), transfer and test-time partitions."""
        counted: dict[str, int] = defaultdict(int)
        for row in self.rows:
            if row.stage in ("evaluation", "transfer", "test_time"):
                counted[row.protocol] += row.partitions
        return dict(counted)

    def as_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite, "grid": self.grid, "protocol": self.protocol, "backbone": self.backbone,
            "architecture": self.costs.architecture, "device": self.costs.description,
            "costs": self.costs.as_dict(),
            "datasets": {name: size.as_dict() for name, size in self.sizes.items()},
            "rows": [row.as_dict() for row in self.rows],
            "totals": {"seconds": round(self.total_seconds, 1), "hours": round(self.total_seconds / 3600, 2),
                       "by_protocol": _rounded(self.totals_by_protocol()),
                       "by_method": _rounded(self.totals_by_method()),
                       "by_stage": _rounded(self.totals_by_stage()),
                       "partitions_by_protocol": self.partitions_by_protocol()},
            "notes": list(self.notes),
        }

    def render(self) -> str:
        from models.plan.rendering import render_plan

        return render_plan(self)


def _ordered_totals(rows: list[PlanRow], key) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for row in rows:
        totals[key(row)] += row.seconds
    rank = {name: index for index, name in enumerate((*PROTOCOL_ORDER, *STAGES))}
    return dict(sorted(totals.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def _rounded(totals: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 1) for name, value in totals.items()}


def plan_run(catalog: Catalog, costs: MeasuredCosts, datasets: list[str] | None = None,
             experiments: list[str] | None = None, protocol: str | None = None, backbone: str | None = None,
             sizes: dict[str, DatasetSize] | None = None, counts_from_disk: bool = False,
             curation_workers: int | None = None) -> RunPlan:
    """The plan of `promptlab run` with this selection on the device `costs` were measured on. `sizes` replaces
    the datasets' counts (else published, or read from disk with `counts_from_disk`)."""
    selection = run_selection(catalog, datasets, experiments, protocol)
    involved = dict.fromkeys([*selection.datasets, *(name for name, _ in selection.partitions)])
    for source, _ in selection.transfers:
        involved.update(dict.fromkeys(name for targets in catalog.transfer.targets_of(source).values()
                                      for name in targets))
    for source, _ in selection.test_time:
        involved.update(dict.fromkeys(catalog.test_time.targets[source]))
    for held_out, _ in selection.multi_source:
        involved.update(dict.fromkeys(catalog.multi_source.split_of(held_out).sources))
    known = dict(sizes or {})
    missing = [name for name in dict.fromkeys([*catalog.datasets, *catalog.multitask.sources])
               if name in involved and name not in known]
    known.update(dataset_sizes(catalog, missing, counts_from_disk))
    pricer = _Pricer(catalog, costs, known, curation_workers or min(8, os.cpu_count() or 1))
    rows = pricer.rows(selection)
    return RunPlan(catalog.suite.name if catalog.suite else None, catalog.grid, protocol,
                   backbone or catalog.default_backbone, costs, {name: known[name] for name in involved}, rows,
                   pricer.notes(selection), selection)


class _Pricer:
    """Prices each stage's work; collects rows keyed by (protocol, stage, method)."""

    def __init__(self, catalog: Catalog, costs: MeasuredCosts, sizes: dict[str, DatasetSize], curation_workers: int):
        self.catalog, self.costs, self.sizes = catalog, costs, sizes
        self.curation_workers = curation_workers
        self.groups: dict[tuple, dict[str, Any]] = {}
        self.decoded_elsewhere = 0  # images the device stages decode (not priced)
        self.unmodelled: set[str] = set()

    # ---------------------------------------------------------------------------------------------- rows
    def add(self, protocol: str, stage: str, method: str | None, seconds_by_dataset: dict[str, float],
            partitions: int = 1, images: int = 0, steps: int = 0, detail: str = "", source: str | None = None) -> None:
        group = self.groups.setdefault((protocol, stage, method), {
            "datasets": {}, "partitions": 0, "images": 0, "steps": 0, "details": {}, "sources": {}})
        if source is not None:
            group["sources"][source] = None
        for name, seconds in seconds_by_dataset.items():
            group["datasets"][name] = group["datasets"].get(name, 0.0) + seconds
        group["partitions"] += partitions
        group["images"] += images
        group["steps"] += steps
        if detail:
            group["details"][detail] = None

    def rows(self, selection: RunSelection) -> list[PlanRow]:
        for name in selection.datasets:
            self.curation(name)
        for dataset, key in selection.partitions:
            self.experiment_partition(dataset, self.catalog.experiment(key), selection.protocol)
        for key in selection.multitask:
            self.multitask_source_run(self.catalog.experiment(key))
        for name in sorted({entry.name for _, key in selection.partitions
                            if (entry := self.catalog.initialisations.of(key)) is not None}):
            self.initialisation_run(self.catalog.initialisations.entries[name])
        for source, key in selection.transfers:
            self.transfer_partition(source, self.catalog.experiment(key))
        encoded_views: set[tuple] = set()
        for source, key in selection.test_time:
            self.test_time_partition(source, key, encoded_views)
        for held_out, key in selection.multi_source:
            self.multi_source_partition(held_out, self.catalog.experiment(key))
        stage_rank = {stage: index for index, stage in enumerate(STAGES)}
        protocol_rank = {protocol: index for index, protocol in enumerate(PROTOCOL_ORDER)}
        ordered = sorted(self.groups.items(), key=lambda item: (
            protocol_rank.get(item[0][0], len(protocol_rank)), stage_rank[item[0][1]], item[0][2] or ""))
        return [PlanRow(protocol, stage, method, tuple(group["datasets"]), group["partitions"], group["images"],
                        group["steps"], sum(group["datasets"].values()), dict(group["datasets"]),
                        "; ".join(group["details"]), tuple(group["sources"]))
                for (protocol, stage, method), group in ordered]

    # ------------------------------------------------------------------------------------------ stages
    def curation(self, name: str) -> None:
        entry, size = self.catalog.dataset(name), self.sizes[name]
        inspected = inspected_images(self.catalog, entry, size)
        self.add(DATA, "curation", None, {name: inspected * self.costs.decode_seconds / self.curation_workers},
                 images=inspected, detail=f"decoded and hashed on {self.curation_workers} CPU threads")
        trained = trained_images_encoded(self.catalog, entry, size)
        seconds = 0.0
        for split_images in (trained, trained, size.val, size.test):  # train, train mirrored, val, test
            seconds += self.costs.image_forward.seconds(split_images, math.ceil(split_images / _canonical_batch()))
        encoded = 2 * trained + size.val + size.test
        self.decoded_elsewhere += encoded
        self.add(DATA, "features", None, {name: seconds}, images=encoded,
                 detail="every split's original view and the training split's mirror")

    def experiment_partition(self, dataset: str, experiment: ExperimentConfig, selected_protocol: str | None) -> None:
        size, spec = self.sizes[dataset], get_method(experiment.method)
        protocol = _protocol_label(experiment, selected_protocol)
        if spec.trains_prompts:
            steps, seconds, detail = self.training(size, experiment)
            self.add(protocol, "training", experiment.method, {dataset: seconds}, steps=steps, detail=detail)
        if experiment.augmentation is not None:
            self.unmodelled.add("augmentation: the diffusion model's image variations (and their features)")
        if experiment.pseudolabels is not None or experiment.setting is not None:
            self.unmodelled.add("pseudolabel rounds and learning settings' unlabelled pools: priced as one "
                                "training on the labelled images, without the pool's scoring or later rounds")
        templates = len(experiment.templates_for(self.catalog.dataset(dataset)))
        seconds = self.scoring(experiment.method, experiment.parameters, size.classes, size.test, templates)
        self.decoded_elsewhere += 0 if spec.frozen_image_encoder else size.test
        self.add(protocol, "evaluation", experiment.method, {dataset: seconds}, images=size.test)

    def transfer_partition(self, source: str, experiment: ExperimentConfig) -> None:
        """The source's checkpoint scored on every target's test split; its seconds are counted by target."""
        spec = get_method(experiment.method)
        by_target, images = {}, 0
        targets = [name for names in self.catalog.transfer.targets_of(source).values() for name in names]
        for target in targets:
            size = self.sizes[target]
            templates = len(experiment.templates_for(self.catalog.dataset(target)))
            by_target[target] = self.scoring(experiment.method, experiment.parameters, size.classes, size.test,
                                             templates)
            images += size.test
        self.decoded_elsewhere += 0 if spec.frozen_image_encoder else images
        self.add("transfer", "transfer", experiment.method, by_target, images=images, source=source)

    def test_time_partition(self, source: str, run_key: str, encoded_views: set[tuple]) -> None:
        from models.catalog.testtime_settings import published_settings

        run = self.catalog.test_time.run(run_key)
        settings = published_settings(run.mode, {**run.settings, "seed": run.seed})
        start = self.catalog.experiment(run.start)
        # a zero-shot start is tuned as CoOp's context (models/testtime/start.py)
        tuned_method, parameters = ((start.method, start.parameters) if get_method(start.method).trains_prompts
                                    else ("coop", {}))
        spec, shape = get_method(tuned_method), STEP_SHAPES.get(tuned_method, StepShape())
        chunk = _text_chunk_size(tuned_method, parameters)
        views = settings.n_views + settings.n_generated_views
        kept = max(1, round(views * (settings.selection_fraction if run.mode == "tpt"
                                     else settings.cosine_fraction * settings.entropy_fraction)))
        if settings.n_generated_views:
            self.unmodelled.add("DiffTPT's generated views (the diffusion model's sampling)")
        by_target, images = {}, 0
        limit = self.catalog.test_time.max_test_images
        for target in self.catalog.test_time.targets[source]:
            size = self.sizes[target]
            count = min(size.test, limit) if limit else size.test
            classes = size.classes
            per_image = (2 + (1 if settings.steps else 0)) * self.text_seconds(classes, chunk, training=False)
            per_image += settings.steps * self.text_seconds(classes, chunk, training=True,
                                                            extra_backwards=shape.extra_text_backwards)
            forward = self.costs.image_forward
            if spec.frozen_image_encoder:  # views encoded once per (seed, recipe, image), then read from the cache
                cache_key = (target, run.seed, settings.recipe, count)
                views_seconds = 0.0 if cache_key in encoded_views else count * forward.seconds(views)
                encoded_views.add(cache_key)
            else:  # vision prompts: the kept views re-encoded at every step
                views_seconds = count * (forward.seconds(views) + forward.seconds(1) + settings.steps * (
                    self.costs.image_train.seconds(kept) + forward.seconds(kept)))
            self.decoded_elsewhere += count  # the views are crops of the decoded image
            by_target[target] = count * per_image + views_seconds
            images += count
        self.add("test_time", "test_time", f"{run.mode} ({start.method} start)", by_target, images=images,
                 detail=f"{views} views and {settings.steps} step(s) per test image", source=source)

    def multi_source_partition(self, held_out: str, experiment: ExperimentConfig) -> None:
        """Training on the union of the split's source domains (SPG: spg_training), then the held-out domain's test
        split scored; counted under the held-out domain."""
        sources = [self.sizes[name] for name in self.catalog.multi_source.split_of(held_out).sources]
        if experiment.method == "spg":
            steps, seconds, detail = self.spg_training(sources, experiment)
        else:  # the pooled sources' images for the same epochs: each source's training, summed
            trainings = [self.training(size, experiment) for size in sources]
            steps, seconds = sum(t[0] for t in trainings), sum(t[1] for t in trainings)
            detail = f"{trainings[0][2]} on {len(sources)} source domains"
        self.add("multi_source", "training", experiment.method, {held_out: seconds}, steps=steps, detail=detail)
        size = self.sizes[held_out]
        templates = len(experiment.templates_for(self.catalog.dataset(held_out)))
        self.add("multi_source", "evaluation", experiment.method,
                 {held_out: self.scoring(experiment.method, experiment.parameters, size.classes, size.test, templates)},
                 images=size.test)

    def multitask_source_run(self, experiment: ExperimentConfig) -> None:
        """An MVLPT source run: its prompt trained on the pooled few-shot sets of the multitask sources, every step's
        text pass over all their classes (the concatenated class names); counted under the joined source names."""
        sources = [self.sizes[name] for name in self.catalog.multitask.sources]
        pooled = DatasetSize("+".join(size.name for size in sources), sum(size.classes for size in sources),
                             sum(size.train for size in sources), sum(size.val for size in sources), 0,
                             sources[0].counted)
        steps, seconds, detail = self.training(pooled, experiment)
        self.add("multitask", "training", experiment.method, {pooled.name: seconds}, steps=steps,
                 detail=f"{detail} on {len(sources)} pooled sources ({pooled.classes} classes)")

    def initialisation_run(self, entry) -> None:
        """An upstream initialisation (GRAM, PVP; models/experiments/initialisations.py): the corpus pairs encoded once
        (GRAM: their captions too, for its domains), then GRAM's outer steps of tasks_per_step tasks (a support pass
        with gradients and a query pass through the inner step; second order one more backward) or PVP's epochs over
        the pairs. A CoOp prompt's step is a text pass over all caption classes (at most the corpus' subject-caption
        vocabulary), a VPT prompt's an image pass with gradients over the step's images; counted under
        "initialisations" as one partition each."""
        from models.embedded.corpus import DIGIT_WORDS, SHAPES, TEXTURES
        from models.prompting.methods.gram import GRAMMetaSchedule
        from models.prompting.training import OptimizationConfig

        pairs = entry.corpus_pairs or self.catalog.world["corpus"]["num_pairs"]
        classes = len(SHAPES) * len(TEXTURES) + len(DIGIT_WORDS)
        text_prompt = get_method(entry.method).frozen_image_encoder
        chunk = _text_chunk_size(entry.method, entry.parameters)
        batches = math.ceil(pairs / EVALUATION_BATCH)
        seconds = self.costs.image_forward.seconds(pairs, batches)
        if entry.kind == "gram":
            meta = GRAMMetaSchedule(**entry.meta)
            seconds += self.costs.text_forward.seconds(pairs, batches)
            steps = meta.outer_steps * meta.tasks_per_step * 2
            task_images = meta.n_way * (meta.support_shots + meta.query_shots)
            if text_prompt:
                seconds += steps * self.text_seconds(classes, chunk, training=True,
                                                     extra_backwards=int(meta.second_order))
            else:
                seconds += (1 + int(meta.second_order)) * self.costs.image_train.seconds(
                    task_images * steps / 2, steps)
            detail = f"{meta.outer_steps} meta steps x {meta.tasks_per_step} tasks on {pairs} corpus pairs"
        else:
            schedule = {key: value for key, value in entry.optimization.items()
                        if key not in ("epochs_by_shots", "iterations_per_shot")}
            optimization = OptimizationConfig(**schedule)
            per_epoch = math.ceil(pairs / optimization.batch_size)
            steps = optimization.epochs * per_epoch
            seconds += optimization.epochs * (
                per_epoch * self.text_seconds(classes, chunk, training=True) if text_prompt
                else self.costs.image_train.seconds(pairs, per_epoch))
            detail = f"{optimization.epochs} epochs on {pairs} corpus pairs"
        self.add("initialisations", "training", entry.method, {f"corpus ({entry.name})": seconds}, steps=steps,
                 detail=detail)

    def spg_training(self, sources: list[DatasetSize], experiment: ExperimentConfig) -> tuple[int, float, str]:
        """SPG's two stages (models/prompting/methods/spg.py): stage I is one CoOp run per source domain (C class
        prompts with gradients per step); stage II's GAN steps are MLPs on cached features and priced as nothing,
        but each of its epochs scores the sources' val images with a generated context each (C prompts per image)."""
        from models.experiments import optimization_config
        from models.prompting.methods import parse_method_parameters

        parameters = parse_method_parameters("spg", experiment.parameters)
        chunk = _text_chunk_size("spg", experiment.parameters)
        steps, seconds = 0, 0.0
        for size in sources:
            samples = size.classes * min(experiment.shots or 1, int(size.per_class("train")) or 1)
            domain_steps = parameters.domain_prompt_epochs * math.ceil(samples / parameters.domain_prompt_batch_size)
            steps += domain_steps
            seconds += domain_steps * self.text_seconds(size.classes, chunk, training=True)
        optimization = optimization_config(experiment)
        validation = sum(size.val for size in sources) if experiment.selection_policy == "full_val" else 0
        seconds += optimization.epochs * self.text_seconds(validation * sources[0].classes, chunk, training=False)
        return (steps, seconds, f"{experiment.shots} shots: stage I {parameters.domain_prompt_epochs} epochs x "
                                f"{len(sources)} domains, GAN {optimization.epochs} epochs on cached features")

    # -------------------------------------------------------------------------------------- work units
    def training(self, size: DatasetSize, experiment: ExperimentConfig) -> tuple[int, float, str]:
        """(steps, seconds, detail) of one partition's training."""
        from models.experiments import optimization_config

        method = experiment.method
        classes = math.ceil(size.classes / 2) if experiment.protocol == "base_to_new" else size.classes
        per_class = experiment.shots or self.catalog.learning_settings.labels_per_class
        available = size.train // size.classes if size.classes and size.train else per_class
        samples = classes * min(per_class, available)
        if not samples:
            return 0, 0.0, ""
        shape = STEP_SHAPES.get(method, StepShape())
        if shape.zeroth_order:
            return self.zeroth_order_training(samples, experiment)
        if shape.whole_pool_student:
            return self.whole_pool_training(size, experiment)
        if not getattr(get_method(method).build, "trained_by_gradient", True):
            if method == "linear_probe":
                return 0, self.linear_probe_seconds(samples, classes, experiment.parameters,
                                                    searches_c=size.val > 0), "lbfgs fits on the host CPU"
            self.unmodelled.add(f"{method}'s closed-form fit")
            return 0, 0.0, ""
        optimization = optimization_config(experiment)
        steps_per_epoch = math.ceil(samples / optimization.batch_size)
        shape, spec = STEP_SHAPES.get(method, StepShape()), get_method(method)
        epoch = 0.0
        if shape.text_pass:
            prompts = samples / steps_per_epoch * classes if shape.prompts_per_image else classes
            epoch += shape.views_per_image * steps_per_epoch * self.text_seconds(
                prompts, _text_chunk_size(method, experiment.parameters), training=True,
                extra_backwards=shape.extra_text_backwards)
        if not spec.frozen_image_encoder:  # two views per image, one drawn per epoch: samples images per epoch
            image_pass = self.costs.image_train if shape.image_gradient else self.costs.image_forward
            epoch += image_pass.seconds(samples * shape.views_per_image, steps_per_epoch * shape.views_per_image)
            if shape.frozen_image_forward:
                epoch += self.costs.image_forward.seconds(samples, steps_per_epoch)
        if optimization.steps is not None:  # a fixed number of steps (iterations_per_shot), the last epoch cut short
            return (optimization.steps, optimization.steps / steps_per_epoch * epoch,
                    f"{experiment.shots} shots: {optimization.steps} steps" if experiment.shots else "")
        return (optimization.epochs * steps_per_epoch, optimization.epochs * epoch,
                f"{experiment.shots} shots: {optimization.epochs} epochs" if experiment.shots else "")

    def zeroth_order_training(self, samples: int, experiment: ExperimentConfig) -> tuple[int, float, str]:
        """(steps, seconds, detail) of a black-box method's SPSA loop (BlackVIP): 2 x perturbation_samples prompted
        batches through the image tower per step, no backward; the frozen coordinator's features of the two views of
        each image once beforehand."""
        from models.experiments import optimization_config
        from models.prompting.methods import parse_method_parameters

        optimization = optimization_config(experiment)
        parameters = parse_method_parameters(experiment.method, experiment.parameters)
        batch = min(optimization.batch_size, samples)
        steps = optimization.epochs * max(1, samples // optimization.batch_size)
        queries = 2 * parameters.perturbation_samples
        seconds = steps * queries * self.costs.image_forward.seconds(batch, 1)
        seconds += self.costs.image_forward.seconds(2 * samples, math.ceil(2 * samples / EVALUATION_BATCH))
        return steps, seconds, f"{experiment.shots} shots: {optimization.epochs} epochs" if experiment.shots else ""

    def whole_pool_training(self, size: DatasetSize, experiment: ExperimentConfig) -> tuple[int, float, str]:
        """(steps, seconds, detail) of NoLA: the pool (every training image) scored zero-shot and encoded by the
        labeller's encoder (priced as the backbone's image tower, its default), then the prompted student's epochs
        over the whole pool, each step a forward and backward of the image tower; the labeller's MLP and the strong
        views' augmentation are not priced."""
        from models.experiments import optimization_config

        optimization, pool = optimization_config(experiment), size.train
        steps = optimization.epochs * math.ceil(pool / optimization.batch_size)
        batches = math.ceil(pool / EVALUATION_BATCH)
        seconds = 2 * self.costs.image_forward.seconds(pool, batches)
        seconds += optimization.epochs * self.costs.image_train.seconds(pool, math.ceil(pool / optimization.batch_size))
        self.unmodelled.add("nola's labeller MLP and strong-view augmentation")
        return steps, seconds, f"{pool} unlabelled images: {optimization.epochs} epochs"

    def scoring(self, method: str, parameters: dict, classes: int, images: int, templates: int) -> float:
        """Seconds to score `images` test images among `classes` classes with a method's prompts."""
        spec, shape = get_method(method), STEP_SHAPES.get(method, StepShape())
        chunk = _text_chunk_size(method, parameters)
        if shape.prompts_per_image:  # every image's own C prompts
            seconds = self.text_seconds(images * classes, chunk, training=False)
        else:
            prompts = classes * (templates if not spec.trains_prompts else 1)
            seconds = self.text_seconds(prompts, chunk, training=False)
        if not spec.frozen_image_encoder:
            seconds += self.costs.image_forward.seconds(images, math.ceil(images / EVALUATION_BATCH))
        return seconds

    def text_seconds(self, prompts: float, chunk: int, training: bool, extra_backwards: int = 0) -> float:
        """Class prompts through the text tower in passes of `chunk` (models/prompting/text_passes.py): with
        gradients and more than one pass, each pass's forward is recomputed in the backward."""
        passes = max(1, math.ceil(prompts / chunk))
        forward = self.costs.text_forward.seconds(prompts, passes)
        if not training:
            return forward
        forward_backward = self.costs.text_train.seconds(prompts, passes)
        recompute = forward if passes > 1 else 0.0
        backward = max(0.0, forward_backward - forward)
        return forward_backward + recompute + extra_backwards * (backward + recompute)

    def linear_probe_seconds(self, samples: int, classes: int, parameters: dict, searches_c: bool = True) -> float:
        """scikit-learn lbfgs fits on both views of each image (models/prompting/methods/linear_probe.py): the
        coarse sweep and the bisection's new ends, or one fit at a fixed C where the dataset has no val set
        (ImageNet), each priced at a share of max_iter iterations."""
        parsed = parse_method_parameters("linear_probe", parameters)
        fits = len(parsed.coarse_log10_grid()) + (parsed.refine_steps + 1 if parsed.refine_steps else 0)
        fits = fits if searches_c else 1
        iterations = fits * parsed.max_iter * LINEAR_PROBE_ITERATION_SHARE
        operations = LINEAR_PROBE_OPERATIONS_PER_ITERATION * 2 * samples * self.costs.embed_dim * max(classes, 2)
        return iterations * operations / self.costs.cpu_float64_flops

    # -------------------------------------------------------------------------------------------- notes
    def notes(self, selection: RunSelection) -> list[str]:
        decode_hours = self.decoded_elsewhere * self.costs.decode_seconds / 3600
        notes = [
            "Device compute only. Not modelled: decoding and preprocessing the images the features, evaluation and "
            f"test-time stages read ({self.decoded_elsewhere:,} decodes, about {decode_hours:.1f} h on one CPU core "
            "here: hidden while the loader keeps up with the device, added where it does not), reading from disk "
            "or object storage, warm-up (model loading and first calls in each job), and Dagster's few seconds "
            f"per job ({len(selection.partitions) + len(selection.transfers) + len(selection.test_time)} "
            "partition jobs).",
            "Not included: the embedded world (first run only: corpus and diffusion model, minutes on CPU) and the "
            "report.",
            "Training: epochs x ceil(shots x classes / batch) steps (methods.yaml epochs_by_shots), or shots x "
            "iterations_per_shot steps (CLIP-LoRA), each step priced "
            "by what its method runs; the linear probe's lbfgs fits at "
            f"{LINEAR_PROBE_ITERATION_SHARE:.0%} of max_iter each on the host CPU.",
            "One device, partitions one after another: --workers on one GPU shares its compute, so this does not "
            "divide by it.",
        ]
        notes += [f"Not modelled: {item}." for item in sorted(self.unmodelled)]
        unknown = [name for name, size in self.sizes.items() if not size.known]
        if unknown:
            notes.append(f"Sizes unknown (no published counts, no folder read): {unknown}; their work is priced at "
                         "zero.")
        return notes


def _canonical_batch() -> int:
    from models.prompting.features import CANONICAL_BATCH_SIZE

    return CANONICAL_BATCH_SIZE


def _text_chunk_size(method: str, parameters: dict) -> int:
    return getattr(parse_method_parameters(method, parameters), "text_chunk_size", DEFAULT_TEXT_CHUNK_SIZE)


def _protocol_label(experiment: ExperimentConfig, selected: str | None) -> str:
    """The protocol a partition is counted under: untrained references are zero-shot; a run restricted to transfer
    or test-time trains its checkpoints for that protocol; else the experiment's own (learning setting, base-to-new
    or few-shot)."""
    if not get_method(experiment.method).trains_prompts:
        return ZERO_SHOT
    if selected in ("transfer", "test_time"):
        return selected
    if experiment.setting is not None:
        return experiment.setting
    return "base_to_new" if experiment.protocol == "base_to_new" else "few_shot"
