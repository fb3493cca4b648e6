"""One registry of prompt methods: what each learns, where it hooks into the towers, and its loss."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.text_tower import TextTower


@dataclass
class ClassifierContext:
    """What a method needs to build its classifier: the frozen backbone, class names and templates."""

    clip_model: nn.Module
    tokenizer: Any
    classnames: list[str]
    templates: list[str]  # hand-crafted templates with one "{}" each
    text_tower: TextTower | None = None
    # where the zero-shot template ensemble is cached (models.prompting.text_cache); None: computed every time
    text_cache: Any = None
    # the dataset's templates in groups (models.prompting.template_groups.TemplateGroups; datasets.yaml
    # template_groups), for methods with one prompt per group (MoCoOp); None: the dataset gives none
    template_groups: Any = None
    # every class name of the dataset, where `classnames` are a subset being trained on (base-to-new's base classes);
    # None: the same as classnames
    dataset_classnames: list[str] | None = None
    # key phrases per class (models.prompting.class_descriptions.ClassDescriptions; assets_catalog/descriptions), for
    # methods whose prompts carry external knowledge (KAPT); None: the dataset has no descriptions file
    class_descriptions: Any = None

    def __post_init__(self) -> None:
        if self.text_tower is None:
            self.text_tower = TextTower(self.clip_model)

    def template_ensemble(self) -> torch.Tensor:
        """(C, E) zero-shot text features of the class names with the templates (prompt_assembly's ensemble), from
        the text cache when one is given."""
        from models.prompting.prompt_assembly import template_ensemble_features

        if self.text_cache is not None:
            return self.text_cache.template_ensemble(self.text_tower, self.tokenizer, self.classnames, self.templates)
        return template_ensemble_features(self.text_tower, self.tokenizer, self.classnames, self.templates)


class PromptedClassifier(nn.Module):
    """Scores image inputs against one text feature per class; subclasses decide how text features arise.

    The inputs are cached image features (N, E) for methods with a frozen, unprompted image tower, and
    preprocessed images (N, 3, H, W) for methods that prompt the image tower (MethodSpec.frozen_image_encoder).
    """

    # False for methods fitted in closed form (the linear probe): the training loop calls `fit` instead of SGD.
    trained_by_gradient: bool = True

    def __init__(self, context: ClassifierContext):
        super().__init__()
        self.classnames = list(context.classnames)
        self.text_tower = context.text_tower
        # CLIP's learned temperature, frozen: prompts are tuned, the backbone is not.
        self.register_buffer("logit_scale", context.clip_model.logit_scale.detach().exp().clone())

    def text_features(self) -> torch.Tensor:
        raise NotImplementedError

    def logits_from(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        text = F.normalize(text_features.float(), dim=-1)
        image = F.normalize(image_features.float(), dim=-1)
        return self.logit_scale * image @ text.t()

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logits_from(image_features, self.text_features())

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor | None = None):
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        if sample_weights is None:
            return per_sample.mean()
        return (per_sample * sample_weights).sum() / sample_weights.sum()

    def training_loss(
        self, image_features: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one training step; methods with extra loss terms on the text features override it."""
        logits = self(image_features)
        return self.loss(logits.float(), labels, sample_weights), logits

    def backward_step(
        self,
        image_features: torch.Tensor,
        labels: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
        forward_context: Callable[[], Any] = contextlib.nullcontext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's (loss, logits), leaving the gradient to apply in each parameter's .grad.

        forward_context wraps the forward only (the training loop passes autocast), so the backward runs outside it.
        Methods that shape the update itself (e.g. ProGrad's gradient projection) override this.
        """
        with forward_context():
            loss, logits = self.training_loss(image_features, labels, sample_weights)
        loss.backward()
        return loss, logits

    def on_training_start(self, config: Any) -> None:
        """Called by the training loop once before the first step, with its OptimizationConfig, after the classifier
        moved to the training device: e.g. R-AMT seeds the generator of its gradient dropout from config.seed, so that
        the same seed draws the same numbers."""

    def set_validation(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Called by the training loop before training when the experiment's selection policy gives a validation set
        (e.g. Tip-Adapter-F re-searches alpha and beta on it after training); the loop itself selects the epoch."""

    def on_epoch_end(self, epoch: int, n_epochs: int) -> None:
        """Called by the training loop after each epoch (1-based); e.g. PromptSRC keeps each epoch's prompts."""

    def on_training_end(self) -> None:
        """Called once after the last epoch; e.g. PromptSRC loads its Gaussian aggregate of the epochs' prompts."""

    def fit(self, training_set: Any, optimization: Any, on_epoch: Any = None) -> Any:
        """Fitting outside the training loop for methods with trained_by_gradient = False (closed form, or a loop of
        their own around it); returns a TrainingHistory. on_epoch(epoch, loss, train accuracy), where given, is
        called after each epoch of a method that has epochs, as the training loop does."""
        raise NotImplementedError(f"{type(self).__name__} trains by gradient; use the training loop")

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters as optimizer groups, each with `lr_scale`: the multiple of the schedule's
        learning rate it trains at after warm-up (warm-up runs every group at the warm-up rate, as Dassl's
        ConstantWarmupScheduler). One group at 1 unless a method says otherwise (MoCoOp's LayerNorms at 0.1)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The learned prompt parameters only (the checkpoint of a method)."""
        return {name: p.detach().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}


@dataclass(frozen=True)
class Paper:
    """A method's paper, as the methods page cites it (models/methods_page.py)."""

    authors: str  # "Zhou et al."
    title: str
    venue: str  # "IJCV 2022", "arXiv 2023"
    link: str | None = None


@dataclass(frozen=True)
class Verification:
    """How a method is checked: against the authors' code on the reference set, or on a property of the method.

    `test` is a pytest node (tests/...py::test_name) that performs the check; the methods page names it and a test
    (tests/prompting/test_method_page.py) makes sure it exists.
    """

    kind: str  # "reference" | "property"
    statement: str  # what the test shows, one sentence
    test: str
    authors_code: str | None = None  # reference: the repository and commit the reference outputs came from

    def __post_init__(self) -> None:
        if self.kind not in ("reference", "property"):
            raise ValueError(f"a verification is 'reference' or 'property', got {self.kind!r}")
        if self.kind == "reference" and not self.authors_code:
            raise ValueError("a reference verification names the authors' code it was compared with")

    @property
    def test_file(self) -> str:
        return self.test.split("::")[0]


def matches_authors_code(test: str, authors_code: str, what: str) -> Verification:
    """Reproduces the authors' code on the reference tiny CLIP (tests/data/*_reference.*)."""
    return Verification("reference", what, test, authors_code)


def tested_property(statement: str, test: str) -> Verification:
    return Verification("property", statement, test)


# Model-selection policies (the experiment's `selection`, else the method's published one): which labelled images
# choose a method's epoch or hyperparameters. "last": none (defaults, last epoch); "few_shot_val": the K-shot val
# subset (min(K, 4) per class, CoOp's val); "full_val": the dataset's whole val split. Test is never one of them.
SELECTION_POLICIES = ("last", "few_shot_val", "full_val")
DASSL_LAST_EPOCH = "As the authors' Dassl scripts (TEST.FINAL_MODEL last_step): the last epoch is tested, no validation."

# Where a method acts, from the frozen backbone's input to its output; the page lists them in this order.
HOOK_POINTS = ("text input", "text layers", "image input", "image layers", "feature space", "gradient")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    parameters_type: type  # a dataclass whose field defaults are the published defaults
    build: Callable[[ClassifierContext, Any], PromptedClassifier]
    trains_prompts: bool
    frozen_image_encoder: bool  # image features can be computed once and cached
    hooks: str  # where the method hooks into the towers, for the catalog and the UI
    description: str
    # Whether, with these parameters, the learned state has one entry per class (CoOp's CSC, a linear probe's
    # weights): such a state cannot be applied to other classes (base-to-new's new classes, cross-dataset).
    class_specific: Callable[[Any], bool] = lambda parameters: False
    # Whether the method adapts from the unlabelled pool itself, without labels or a pseudolabel strategy (TFUP: it
    # selects its own pseudolabels from TrainingSet.unlabelled); such a method runs in the ul setting on its own.
    adapts_from_pool: bool = False
    # For the methods page (`promptlab methods`, docs/methods.md): the paper, where in HOOK_POINTS the method acts
    # (empty: nowhere, zero-shot CLIP) and how the method is verified.
    paper: Paper | None = None
    hook_points: tuple[str, ...] = ()
    verification: Verification | None = None
    # The selection policy the method is published with (SELECTION_POLICIES), and one sentence on how the authors
    # selected, naming the departure where they selected on test.
    selection: str = "last"
    selection_note: str = ""
    # The augmented views it trains on (models.prompting.view_recipes.ViewRecipe: crop range, flip, passes), cached
    # per image, recipe and pass; None: the original and mirrored views.
    training_views: Any = None
    # Whether it reads the dataset's template groups (ClassifierContext.template_groups; MoCoOp's experts): then its
    # checkpoint records them, so that evaluation elsewhere rebuilds what was trained
    reads_template_groups: bool = False
    # Whether it reads the dataset's class descriptions (ClassifierContext.class_descriptions; KAPT): then its
    # checkpoint records them (or that it fell back to the template)
    reads_class_descriptions: bool = False

    def __post_init__(self) -> None:
        unknown = [point for point in self.hook_points if point not in HOOK_POINTS]
        if unknown:
            raise ValueError(f"method {self.name!r}: hook points {unknown} are not among {HOOK_POINTS}")
        if self.selection not in SELECTION_POLICIES:
            raise ValueError(f"method {self.name!r}: selection {self.selection!r} is not among {SELECTION_POLICIES}")

    def transfers_to_other_classes(self, overrides: dict[str, Any] | None = None) -> bool:
        return not self.class_specific(parse_method_parameters(self.name, overrides))


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {sorted(METHODS)}") from None


def parse_method_parameters(name: str, overrides: dict[str, Any] | None) -> Any:
    """The method's parameters: its defaults, overridden by the catalog/launchpad values (unknown keys fail)."""
    spec = get_method(name)
    fields = {field.name for field in dataclasses.fields(spec.parameters_type)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {unknown}; its parameters are {sorted(fields)}")
    return spec.parameters_type(**overrides)
