"""NoLA, No Labels Attached (Imam et al., arXiv 2411.19346; code github.com/fazliimam/NoLA, trainers/NoLA.py and
utils/model_utils.py at ffd99ac): CLIP adapted from unlabelled images alone, in three stages inside `fit`.

(i) Class-description-enhanced (CDE) classifier W_cde (C x E): per class, the L2-normalised text features of its
    descriptions (`class_descriptions`, a JSON file {class name: [sentences]}, the authors' descriptions/generic/<DS>.json)
    and of the dataset's templates, averaged and renormalised. Without a descriptions file the templates alone.
(ii) Labeller ("TAAL"): zero-shot probabilities softmax(s f_hat W_cde^T) of the unlabelled pool (the backbone's
    frozen, unprompted image tower, original view); per class c the k pool images predicted c with the highest
    probability, k = max(16, floor(0.2 N / C)); a class that is nobody's first choice takes the k images whose second
    choice it is (by the second probability), else those whose third choice it is; an image picked twice keeps the
    class that picked it first (classes in order). An MLP width -> 256 -> C (ReLU) on the frozen encoder's features of
    those images (original view) is trained with cross-entropy against those choices: Adam lr 1e-3, 50 epochs,
    batch 32. The encoder is `labeller_encoder` (models/prompting/frozen_encoders.py): the authors use DINO ViT-B/16
    ("timm:vit_base_patch16_224.dino"); the default is the backbone's own image tower, frozen and unprompted, since
    no DINO weights are available offline (NoLA then reduces to a LaFTer/UPL-style self-training baseline). The
    training details and the checkpoint config record which encoder a run used.
(iii) Student: the CLIP image tower with `n_tokens` shallow VPT tokens (input only; models/prompting/deep_prompts.py),
    every LayerNorm of the image tower trainable (ln_pre, each block's ln_1 and ln_2, ln_post; held as copies,
    models/prompting/layer_norm_tuning.py), and a bias-free linear head initialised to W_cde; logits = f(x) W^T on the
    raw (unnormalised) projected image feature f, without a temperature, as the authors' `cde_adapter`. Loss:
    label-smoothing cross-entropy (eps 0.1) of the student on a strong view against the labeller's hard label
    argmax MLP(encoder(weak view)). The weak view is the authors' test transform (no augmentation), so each pool
    image's label is computed once before training; the strong view is RandomResizedCrop (area 20-100 %), flip,
    ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomPerspective(0.2, p 0.5), ColorJitter(0.4, 0.4, 0.4, 0.1),
    Gaussian blur (sigma 0.1-2), drawn per image and step from the run's seed. The student trains through the one
    training loop (models/prompting/training.py) at a constant learning rate: AdamW lr 4e-3, weight decay 0.01
    except on biases, 50 epochs, batch 512 (methods.yaml).

At initialisation, with zero VPT tokens, the student's logits are f(x) W_cde^T with f the frozen tower's raw image
feature: ||f(x)|| / s times the CDE zero-shot logits s f_hat W_cde^T, so the student predicts the CDE classifier's class.

Where this differs from the authors' code, deliberately:
- the authors enumerate classes for the top-k by `set(df.labels)`, the pool's ground-truth labels; here range(C):
  no label of the pool reaches NoLA. A class still empty after the third choice stays without examples (recorded in
  the training details) where the authors raise NotImplementedError.
- their optimizer groups mean to exempt LayerNorms from weight decay (no_decay = ['bias', 'LayerNorm.bias',
  'LayerNorm.weight']), but CLIP names its LayerNorms ln_*, so only biases are exempt and LayerNorm weights decay;
  `decay_layer_norm_weights` (default true) follows the code as it runs, false follows its intent.
- their prompt tokens go after CLS, ours at the end of the sequence: prompts carry no positional embedding and the
  tower is permutation-equivariant, so the CLS output is the same. Their uniform init bound sqrt(6 / (3 * 16 * 16 +
  768)) hardcodes ViT-B/16; here the backbone's own patch size and width.
- the strong view starts from the preprocessed image (resized and centre-cropped to the input size, as the training
  loop hands images to a method), not from the full image; RandomPerspective interpolates bilinearly (torchvision's
  tensor kernel has no bicubic) and the blur is torchvision's 13-pixel kernel (models/prompting/self_supervised_views.py).
- the labeller's MLP trains on features of the top-k images in a fixed order shuffled by the run's seed; the student
  loop draws the original or the mirrored image per epoch before its strong view.
- the authors keep the epoch best on the labelled val split (with an early stop after 15 epochs without progress);
  here the training loop's selection on `TrainingSet.validation` when it is given, else the last epoch.
- the authors' NUM_TOKENS is 16 (utils/misc.py), though a comment says experiments used 50; 16 here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from models.prompting.deep_prompts import IndependentLayerPrompts, PromptedVisionTower
from models.prompting.frozen_encoders import BACKBONE, EncoderName, FrozenImageEncoder
from models.prompting.layer_norm_tuning import VisionLayerNormTuning
from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.registry import (ClassifierContext, MethodSpec, Paper, PromptedClassifier,
                                               register_method, tested_property)
from models.prompting.prompt_assembly import encode_template_texts, require_prompts_fit
from models.prompting.self_supervised_views import MOCO_BLUR_KERNEL, MOCO_BLUR_SIGMA, normalise, to_pixels, view_seed
from models.prompting.training import TrainingHistory, train_prompt_parameters


@dataclass(frozen=True)
class NoLAParameters:
    """The authors' settings (utils/misc.py, trainers/NoLA.py, utils/utils.py find_k)."""

    n_tokens: int = 16  # shallow VPT tokens, NUM_TOKENS; 0 leaves the tower's token sequence as it is
    labeller_encoder: str = BACKBONE  # the authors': "timm:vit_base_patch16_224.dino" (frozen_encoders.py)
    labeller_hidden: int = 256  # AdapterMLP's hidden width
    labeller_epochs: int = 50  # TAAL_EPOCHS
    labeller_batch_size: int = 32  # the top-k DataLoader's batch
    labeller_learning_rate: float = 1e-3  # torch.optim.Adam's default, as the authors call it
    min_per_class: int = 16  # k = max(min_per_class, floor(pool_fraction * N / C))
    pool_fraction: float = 0.2  # find_k's percentage
    fallback_choices: int = 3  # first, second, third choice
    label_smoothing: float = 0.1  # LabelSmoothingCrossEntropy's epsilon
    class_descriptions: str | None = None  # JSON {class name: [descriptions]}; None: the templates alone
    decay_layer_norm_weights: bool = True  # their code as it runs (module docstring)
    strong_crop_scale: tuple[float, float] = (0.2, 1.0)  # the strong view's RandomResizedCrop area range
    init_seed: int = 0  # prompt initialisation, independent of the data seed

    def __post_init__(self) -> None:
        EncoderName.parse(self.labeller_encoder, "nola: labeller_encoder")
        scale = self.strong_crop_scale
        if (not isinstance(scale, (list, tuple)) or len(scale) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
                or not 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"nola: strong_crop_scale must be [low, high] with 0 < low <= high <= 1, got {scale!r}")
        object.__setattr__(self, "strong_crop_scale", (float(scale[0]), float(scale[1])))
        for name in ("n_tokens", "labeller_hidden", "labeller_epochs", "labeller_batch_size", "min_per_class",
                     "fallback_choices"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "n_tokens" else 1):
                raise ValueError(f"nola: {name} must be an integer >= {0 if name == 'n_tokens' else 1}, got {value!r}")
        if not 0 < self.pool_fraction <= 1:
            raise ValueError(f"nola: pool_fraction must lie in (0, 1], got {self.pool_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"nola: label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not self.labeller_learning_rate > 0:
            raise ValueError(f"nola: labeller_learning_rate must be > 0, got {self.labeller_learning_rate}")


def examples_per_class(pool_size: int, n_classes: int, fraction: float = 0.2, minimum: int = 16) -> int:
    """The authors' find_k: k = max(minimum, floor(fraction * N / C))."""
    return max(minimum, math.floor(pool_size / n_classes * fraction))


@dataclass
class TopKSelection:
    indices: torch.Tensor  # (M,) pool rows, in class order
    labels: torch.Tensor  # (M,) the class each was chosen for
    choice: list[int]  # per class: the rank of the prediction it was filled from (1, 2, 3; 0: left empty)
    per_class: int

    def counts(self, n_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=n_classes).tolist()


def select_top_k_with_fallback(probabilities: torch.Tensor, per_class: int, choices: int = 3) -> TopKSelection:
    """The authors' top_k_indices_per_class2 on (N, C) probabilities: for each class c in order, the `per_class`
    images whose first choice is c, by decreasing first probability; an empty class falls back to images whose second
    (then third, ...) choice is c, by that choice's probability. An image picked by several classes keeps the first
    (drop_duplicates on the image, keep first). Ties in probability: the lower pool row first."""
    n_classes = probabilities.shape[1]
    choices = min(choices, n_classes)
    top_probabilities, top_classes = probabilities.float().topk(choices, dim=1)
    picked_rows, picked_labels, rank_used = [], [], []
    for label in range(n_classes):
        rank = 0
        for rank in range(choices):
            rows = (top_classes[:, rank] == label).nonzero().flatten()
            if rows.numel():
                # stable sort on -probability: equal probabilities keep pool order
                order = torch.sort(-top_probabilities[rows, rank], stable=True).indices[:per_class]
                picked_rows.append(rows[order])
                picked_labels.append(torch.full((len(order),), label, dtype=torch.long))
                rank_used.append(rank + 1)
                break
        else:
            rank_used.append(0)
    rows = torch.cat(picked_rows) if picked_rows else torch.empty(0, dtype=torch.long)
    labels = torch.cat(picked_labels) if picked_labels else torch.empty(0, dtype=torch.long)
    seen, keep = set(), []
    for position, row in enumerate(rows.tolist()):
        keep.append(row not in seen)
        seen.add(row)
    keep = torch.tensor(keep, dtype=torch.bool)
    return TopKSelection(rows[keep], labels[keep], rank_used, per_class)


def class_description_features(context: ClassifierContext, descriptions_file: str | None) -> torch.Tensor:
    """(C, E) W_cde: per class, the mean of the normalised text features of its descriptions and the templates,
    renormalised."""
    templates = context.template_ensemble().float()  # mean over templates of normalised features
    n_templates = len(context.templates)
    if descriptions_file is None:
        return F.normalize(templates, dim=-1)
    path = Path(descriptions_file)
    if not path.is_file():
        raise ValueError(f"nola: class_descriptions file {path} does not exist")
    descriptions = json.loads(path.read_text())
    missing = [name for name in context.classnames if not descriptions.get(name)]
    if missing:
        raise ValueError(f"nola: {path} has no descriptions for class(es) {missing[:5]}"
                         f"{' and more' if len(missing) > 5 else ''}")
    require_prompts_fit(context.tokenizer, {name: list(descriptions[name]) for name in context.classnames},
                        context.text_tower.context_length)
    rows = []
    with torch.no_grad():
        for index, name in enumerate(context.classnames):
            texts = list(descriptions[name])
            encoded = F.normalize(encode_template_texts(context.text_tower, context.tokenizer, texts).float(), dim=-1)
            rows.append((encoded.sum(0) + n_templates * templates[index]) / (len(texts) + n_templates))
    return F.normalize(torch.stack(rows), dim=-1)


def strong_view_transform(size: tuple[int, int], crop_scale: tuple[float, float] = (0.2, 1.0)) -> v2.Compose:
    """The authors' get_random_transform on uint8 tensors (module docstring for the departures)."""
    kernel = min(MOCO_BLUR_KERNEL, 2 * min(size) - 1)
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=crop_scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomPerspective(distortion_scale=0.2, p=0.5, interpolation=v2.InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
        v2.GaussianBlur(kernel, sigma=MOCO_BLUR_SIGMA),
    ])


def label_smoothing_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The authors' LabelSmoothingCrossEntropy: eps * mean_c(-log p_c) + (1 - eps) * (-log p_target), batch mean
    (torch's cross_entropy with label_smoothing computes exactly this)."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=epsilon)


@dataclass
class LabellerFit:
    """What stage (ii) produced: kept on the classifier after `fit` for inspection, never in its state."""

    encoder: FrozenImageEncoder
    head: nn.Module
    selection: TopKSelection
    pool_labels: torch.Tensor  # (N,) argmax of the labeller on each pool image's original view
    losses: list[float]


class NoLAClassifier(PromptedClassifier):
    """The prompted student; `fit` runs the three stages on TrainingSet.unlabelled."""

    trained_by_gradient = False

    def __init__(self, context: ClassifierContext, parameters: NoLAParameters):
        vision_tower = PromptedVisionTower(context.clip_model)  # a ViT image tower, checked before any text pass
        layer_norms = VisionLayerNormTuning(context.clip_model, "nola", tower_norms=("ln_pre", "ln_post"))
        # Refused now (before training, nothing written) when its weights are not on this machine.
        encoder = FrozenImageEncoder(parameters.labeller_encoder, context.clip_model, "nola")
        super().__init__(context)
        self.parameters_used = parameters
        self.vision_tower = vision_tower
        self.layer_norms = layer_norms
        self.encoder = encoder
        self.pixel_mean, self.pixel_std = encoder.input_mean, encoder.input_std
        visual = vision_tower.visual
        device = visual.positional_embedding.device
        width = vision_tower.width
        patch = visual.conv1.weight.shape[-2:]
        bound = math.sqrt(6.0 / float(3 * patch[0] * patch[1] + width))  # the authors' uniform init, our widths
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            initial = torch.rand(parameters.n_tokens, width) * 2 * bound - bound
            self.vision_prompts = IndependentLayerPrompts(parameters.n_tokens, width, 1, 0.0, initial).to(device)
        self.register_buffer("cde_weights", class_description_features(context, parameters.class_descriptions))
        self.head = nn.Linear(joint_embedding_dim(context.text_tower), len(context.classnames), bias=False,
                              device=device)
        with torch.no_grad():
            self.head.weight.copy_(self.cde_weights)
        image_size = getattr(visual, "image_size", None)
        self.image_size = tuple(image_size) if isinstance(image_size, (tuple, list)) else None
        self.last_labeller: LabellerFit | None = None
        self._strong_seed, self._step = 0, 0

    # ------------------------------------------------------------------ the student
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features (B, E) through the prompted tower with the tuned LayerNorms."""
        return self.layer_norms.call(self.vision_tower, "visual.", images, self.vision_prompts.input_prompt)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_features(images).float())

    def text_features(self) -> torch.Tensor:
        return self.head.weight

    @torch.no_grad()
    def zero_shot_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The CDE zero-shot logits s f_hat W_cde^T of the frozen, unprompted tower."""
        return self.logits_from(self.vision_tower.visual(images.to(self.vision_tower.dtype)), self.cde_weights)

    def strong_views(self, images: torch.Tensor) -> torch.Tensor:
        """One strong view per image, drawn from (run seed, step, position); normalised like the input."""
        pixels = to_pixels(images, self.pixel_mean, self.pixel_std)
        transform = strong_view_transform((int(pixels.shape[-2]), int(pixels.shape[-1])),
                                          self.parameters_used.strong_crop_scale)
        views = []
        for index, image in enumerate(pixels):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(view_seed(self._strong_seed, f"nola_strong:{self._step}", index))
                views.append(normalise(transform(image), self.pixel_mean, self.pixel_std))
        return torch.stack(views).to(images.device, images.dtype)

    def training_loss(self, images, labels, sample_weights=None):
        logits = self(self.strong_views(images))
        self._step += 1
        return label_smoothing_cross_entropy(logits, labels, self.parameters_used.label_smoothing), logits

    def on_training_start(self, config: Any) -> None:
        self._strong_seed, self._step = config.seed, 0

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups as the authors' code runs them: weight decay on all but biases (and, with
        decay_layer_norm_weights false, the LayerNorm weights)."""
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            exempt = name.endswith("bias") or (name.startswith("layer_norms.")
                                               and not self.parameters_used.decay_layer_norm_weights)
            (no_decay if exempt else decay).append(parameter)
        return [{"params": decay, "lr_scale": 1.0}, {"params": no_decay, "lr_scale": 1.0, "weight_decay": 0.0}]

    # ------------------------------------------------------------------ the labeller
    def fit_labeller(self, pool_original: torch.Tensor, seed: int) -> LabellerFit:
        """Stage (ii) on the pool's original view (N, 3, H, W): no label of any kind is read."""
        parameters = self.parameters_used
        n_pool, n_classes = pool_original.shape[0], len(self.classnames)
        probabilities = torch.cat([self.zero_shot_logits(chunk).softmax(-1).float().cpu()
                                   for chunk in pool_original.split(256)])
        per_class = examples_per_class(n_pool, n_classes, parameters.pool_fraction, parameters.min_per_class)
        selection = select_top_k_with_fallback(probabilities, per_class, parameters.fallback_choices)
        features = self.encoder.features(pool_original)  # (N, F), frozen, no gradients
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = nn.Sequential(nn.Linear(features.shape[1], parameters.labeller_hidden), nn.ReLU(),
                                 nn.Linear(parameters.labeller_hidden, n_classes)).to(features.device)
        optimizer = torch.optim.Adam(head.parameters(), lr=parameters.labeller_learning_rate)
        inputs = features[selection.indices.to(features.device)]
        targets = selection.labels.to(features.device)
        losses = []
        head.train()
        for _ in range(parameters.labeller_epochs if len(targets) else 0):
            total = 0.0
            for batch in torch.randperm(len(targets), generator=generator).split(parameters.labeller_batch_size):
                batch = batch.to(features.device)
                loss = F.cross_entropy(head(inputs[batch]), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            losses.append(total / len(targets))
        head.eval()
        for parameter in head.parameters():
            parameter.requires_grad_(False)
        with torch.no_grad():
            pool_labels = head(features).argmax(1).cpu()
        return LabellerFit(self.encoder, head, selection, pool_labels, losses)

    def fit(self, training_set, optimization, on_epoch=None) -> TrainingHistory:
        """The three stages on training_set.unlabelled (images (N, V, 3, H, W), view 0 the original); the labelled
        rows (view_inputs, labels) are not read; training_set.validation, when given, selects the student's epoch."""
        if optimization is None or optimization.epochs < 1:
            raise ValueError("nola trains its student for optimization.epochs >= 1 epochs (the authors: 50)")
        pool = getattr(training_set, "unlabelled", None)
        if pool is None or pool.shape[0] == 0:
            raise ValueError("nola adapts from the unlabelled pool, but the training set has none "
                             "(TrainingSet.unlabelled is None or empty); run it in a setting with an unlabelled pool")
        if pool.dim() == 4:
            pool = pool.unsqueeze(1)
        if pool.dim() != 5:
            raise ValueError(f"nola takes pool images (N, V, 3, H, W); got shape {tuple(pool.shape)}")
        started = time.perf_counter()
        device = self.logit_scale.device
        labeller = self.fit_labeller(pool[:, 0].to(device), optimization.seed)
        self.last_labeller = labeller
        # The student's loop at a constant rate (the authors' MultiStepLR has no milestones): a per-step schedule
        # from learning_rate down to learning_rate, with no warm-up.
        steps = optimization.epochs * math.ceil(pool.shape[0] / optimization.batch_size)
        constant = dataclasses.replace(optimization, steps=steps, warmup_steps=0,
                                       min_learning_rate=optimization.learning_rate)
        validation = training_set.validation
        if validation is not None and validation[0].shape[0] == 0:
            validation = None
        if validation is not None and validation[0].dim() == 5:
            validation = (validation[0][:, 0], validation[1])
        history = train_prompt_parameters(self, pool, labeller.pool_labels, constant, on_epoch=on_epoch,
                                          device=device, validation=validation)
        n_classes = len(self.classnames)
        zero_shot = torch.cat([self.zero_shot_logits(chunk.to(device)).argmax(1).cpu()
                               for chunk in pool[:, 0].split(256)])
        history.details.update(
            labeller_encoder=labeller.encoder.describe(),
            examples_per_class=labeller.selection.per_class,
            labeller_examples=int(labeller.selection.indices.numel()),
            labeller_examples_by_class=labeller.selection.counts(n_classes),
            labeller_choice_by_class=labeller.selection.choice,
            classes_without_examples=[c for c, rank in enumerate(labeller.selection.choice) if rank == 0],
            labeller_epoch_losses=labeller.losses,
            pool_labels_agreement_with_zero_shot=float((labeller.pool_labels == zero_shot).float().mean()),
            pool_labels_by_class=torch.bincount(labeller.pool_labels, minlength=n_classes).tolist(),
            model_selection="validation" if validation is not None else "last_epoch",
            class_descriptions=self.parameters_used.class_descriptions,
        )
        history.seconds = time.perf_counter() - started
        return history


register_method(
    MethodSpec(
        name="nola",
        parameters_type=NoLAParameters,
        build=NoLAClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,  # prompts and LayerNorms change the image features: images at every step
        hooks="vision tower: shallow prompt tokens and every LayerNorm; a linear head from class descriptions, "
              "trained on a frozen encoder's pseudolabels of the unlabelled pool",
        description="NoLA: a labeller on a frozen (self-supervised) encoder, fitted on zero-shot top-k pool images, "
                    "teaches a VPT + LayerNorm CLIP student from strong views; no labels.",
        class_specific=lambda parameters: True,  # the head has one row per class
        adapts_from_pool=True,
        paper=Paper("Imam et al.", "CLIP meets DINO for Tuning Zero-Shot Classifier using Unlabeled Image "
                    "Collections", "arXiv 2024", "https://arxiv.org/abs/2411.19346"),
        hook_points=("image input", "image layers", "feature space"),
        selection="full_val",
        selection_note=("It adapts from the unlabelled pool; the labelled val rows (in UL the dataset's val split) "
                        "choose the student's epoch, as the authors keep the epoch best on Dassl's val split."),
        verification=tested_property(
            "Its labeller and student are bit-identical when every ground-truth label of the pool and the labelled "
            "rows is scrambled: no label reaches it.",
            "tests/prompting/test_nola.py::test_no_label_reaches_the_labeller_or_the_student"),
    )
)
