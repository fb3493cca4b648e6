"""GOPro (Singha et al., BMVC 2023): image-conditioned prompts from the image tower's per-block style and content,
kept consistent across augmented views, with a SimCLR term.

Hooks: the text tower's input (CoOp's context from "a photo of a", class token at the end), shifted per image by a
vector read from every block of the frozen image tower. For block i with output h (B, L, W_vision): content
mu = mean of h over its L tokens, style sigma = sqrt((sum over tokens of (h - mu)^2 + 2.3e-8) / L);
style_i = Ls_i((mu + sigma) / 2), content_i = Lc_i(mu) (Linear(W_vision, W_text), one per block and kind);
mixed_i = (style_i + content_i) / 2; shift = rho([mixed_1 .. mixed_N]) with rho = Linear(N, 1) over the blocks, added
to every context token. Each image then has its own C class prompts (CoCoOp's per-image text pass,
text_passes.encode_image_conditioned_prompts). Widths and the number of blocks are read from the model (the authors
write ViT-B/16's: 12 x Linear(768, 512), Linear(12, 1), a Linear(512, 512) projector).

Views and loss: every training image also gives a MoCo v3 view and an AugMix view (models.prompting.self_supervised_
views); each view goes through the image tower and the same prompt construction. With T, T_moco, T_augmix the
normalised text features (B, C, E) of the three views and z, z_moco = simproj(normalised image features) (Linear(E, E)
then BatchNorm1d, batch statistics while training):
loss = CE(logits, labels) + mse(T, T_moco) + mse(T, T_augmix) + 0.1 * SimCLR(z, z_moco; tau 0.1),
the weights and tau being parameters. Only ctx, the projectors, rho and simproj learn; the towers are frozen.
Published: 4 context tokens from "a photo of a", SGD lr 0.002, batch 4, 50 epochs, fp16 (configs/trainers/GOPro/
vit_b16.yaml); the last epoch is tested.

Where the authors' code (mainaksingha01/GOPro e284586, trainers/gopro.py) departs from its paper, or from itself, and
what is done here:
- AugMix views: their `augmixtrans` builds, for each image, B AugMix views of it and returns inside the loop after the
  first image, so the "AugMix view" of image b is the b-th AugMix of image 0 and the consistency term compares image
  b's prompts with image 0's. Here each image's AugMix view is of that image (what the paper describes).
- Both augmentations start in their code from `to_pil_image` of the already-normalised tensor (out-of-range values
  wrap or clip in the 8-bit conversion), and the MoCo v3 view is normalised with ImageNet's mean and std while the
  tower expects CLIP's. Here the tensor is first mapped back to pixels with the backbone's own mean and std, and every
  view is normalised with them (self_supervised_views).
- The SimCLR term reads image features of the frozen, unprompted tower, so its gradient reaches simproj only, which
  no prediction uses: in their code as here it changes the loss, not the learned prompts. The paper presents it as
  shaping the shared image-text space. Kept (it is in their loss); contrastive_weight 0 gives the same prompts.
- Their prompt learner also builds CoCoOp's meta-net and 12 projectors per kind whatever the backbone's depth; the
  meta-net is never used and is not built here, and there is one projector per block of the tower.
- They evaluate with the full training forward (three views per test image); here the logits need the original only.
- The original view is the loop's, as for every method trained on images (the eval transform or its mirror), not
  Dassl's random resized crop and flip; the MoCo v3 and AugMix views crop from it.
- A batch of one image has no SimCLR negatives and BatchNorm has no batch statistics: its SimCLR term is 0 (theirs
  would fail). The consistency and SimCLR terms are not weighted by sample weights (they use no labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH,
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, matches_authors_code, register_method,
)
from models.prompting.prompt_assembly import tokenize_context_prompts
from models.prompting.self_supervised_views import self_supervised_views
from models.prompting.text_passes import TextPassParameters, encode_image_conditioned_prompts
from models.prompting.text_tower import UnsupportedBackboneError

STYLE_EPSILON = 2.3e-8  # the authors' constant under the square root of the token variance


@dataclass(frozen=True)
class GOProParameters(TextPassParameters):
    n_context: int = 4  # context tokens, when context_init is None
    context_init: str | None = "a photo of a"  # sets n_context to its token count; None: random N(0, init_std)
    init_std: float = 0.02  # of a random context
    init_seed: int = 0  # context (when random), projectors, rho and simproj, independent of the data seed
    moco_consistency_weight: float = 1.0  # mse(T, T_moco)
    augmix_consistency_weight: float = 1.0  # mse(T, T_augmix)
    contrastive_weight: float = 0.1  # SimCLR
    temperature: float = 0.1  # SimCLR's tau

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("moco_consistency_weight", "augmix_consistency_weight", "contrastive_weight", "temperature",
                     "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"gopro: {name} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"gopro: {name} must be >= 0, got {value!r}")
        if self.temperature <= 0:
            raise ValueError(f"gopro: temperature must be > 0 (it divides the SimCLR logits), got {self.temperature!r}")
        if not isinstance(self.n_context, int) or isinstance(self.n_context, bool) or self.n_context < 1:
            raise ValueError(f"gopro: n_context must be an integer >= 1, got {self.n_context!r}")


class BlockProjectors(nn.Module):
    """One Linear(vision width, text width) per block of the image tower (the authors' style/content_projector)."""

    def __init__(self, n_blocks: int, vision_width: int, text_width: int):
        super().__init__()
        self.linear = nn.ModuleList(nn.Linear(vision_width, text_width) for _ in range(n_blocks))


class GOProPromptLearner(nn.Module):
    """The context and the image-conditioned shift; names as the authors' PromptLearner, so checkpoints map."""

    def __init__(self, initial_context: torch.Tensor, n_blocks: int, vision_width: int, text_width: int):
        super().__init__()
        self.ctx = nn.Parameter(initial_context.clone())
        self.style = BlockProjectors(n_blocks, vision_width, text_width)
        self.content = BlockProjectors(n_blocks, vision_width, text_width)
        self.rho = nn.Linear(n_blocks, 1)

    def shift(self, block_outputs: list[torch.Tensor]) -> torch.Tensor:
        """(B, text width): the shift of each image's context from its blocks' outputs, each (B, L, vision width)."""
        mixed = []
        for index, output in enumerate(block_outputs):
            output = output.float()
            content = output.mean(dim=1)
            variance = ((output - content.unsqueeze(1)) ** 2).sum(dim=1)
            deviation = torch.sqrt((variance + STYLE_EPSILON) / output.shape[1])
            style = self.style.linear[index]((content + deviation) / 2)
            mixed.append((style + self.content.linear[index](content)) / 2)
        return self.rho(torch.stack(mixed, dim=-1)).squeeze(-1)


class SimilarityProjector(nn.Module):
    """Linear then BatchNorm1d on normalised image features (the authors' sim_projector), for the SimCLR term."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.batchnorm = nn.BatchNorm1d(width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.batchnorm(self.linear(features))


def simclr_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss (as SLIP's, which GOPro uses) between two views' projections (B, E): image b's positive is its
    other view, its negatives the other images' two views."""
    first, second = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    targets = torch.arange(first.shape[0], device=first.device)
    self_mask = torch.eye(first.shape[0], device=first.device, dtype=first.dtype) * 1e9  # no image is its own negative
    loss_first = F.cross_entropy(
        torch.cat([first @ second.t() / temperature, first @ first.t() / temperature - self_mask], dim=1), targets)
    loss_second = F.cross_entropy(
        torch.cat([second @ first.t() / temperature, second @ second.t() / temperature - self_mask], dim=1), targets)
    return (loss_first + loss_second) / 2


@dataclass
class ViewOutputs:
    """One view of a batch through GOPro: raw image features (B, E) and normalised text features (B, C, E)."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    context_shift: torch.Tensor  # (B, n_context, D)


class GOProClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: GOProParameters):
        visual = getattr(context.clip_model, "visual", None)
        if visual is None or not hasattr(visual, "forward_intermediates") or not hasattr(
                getattr(visual, "transformer", None), "resblocks"):
            raise UnsupportedBackboneError(
                f"gopro reads every block's tokens of a ViT image tower; {type(visual).__name__} is not an open_clip "
                "VisionTransformer")
        super().__init__(context)
        self.parameters_used = parameters
        self.visual = visual
        preprocess = open_clip.get_model_preprocess_cfg(context.clip_model)
        # The mean and std the images were normalised with (open_clip's OpenAI default when the model declares none).
        self.pixel_mean = tuple(preprocess.get("mean") or OPENAI_DATASET_MEAN)
        self.pixel_std = tuple(preprocess.get("std") or OPENAI_DATASET_STD)
        self.pieces = tokenize_context_prompts(
            context.text_tower, context.tokenizer, context.classnames, parameters.n_context, parameters.context_init
        )
        text_width = context.text_tower.width
        vision_width = visual.positional_embedding.shape[-1]
        n_blocks = len(visual.transformer.resblocks)
        device = self.pieces.prefix_embeddings.device
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            initial = self.pieces.initial_or_random_context(text_width, parameters.init_std)
            self.prompt_learner = GOProPromptLearner(initial, n_blocks, vision_width, text_width).to(device)
            self.simproj = SimilarityProjector(joint_embedding_dim(context.text_tower)).to(device)

    def text_features(self) -> torch.Tensor:
        raise NotImplementedError("GOPro's text features depend on the image: use view_outputs")

    def view_outputs(self, images: torch.Tensor) -> ViewOutputs:
        """Images (B, 3, H, W) through the frozen image tower (features and every block's output) and the prompts."""
        with torch.no_grad():  # the tower is frozen and its input carries no gradient
            tower = self.visual.forward_intermediates(images, output_fmt="NLC", output_extra_tokens=True)
        blocks = [torch.cat([prefix, tokens], dim=1) for prefix, tokens in
                  zip(tower["image_intermediates_prefix"], tower["image_intermediates"])]
        shift = self.prompt_learner.shift(blocks)
        context_shift = shift.unsqueeze(1).expand(-1, self.prompt_learner.ctx.shape[0], -1)
        contexts = self.prompt_learner.ctx.unsqueeze(0) + context_shift
        text = encode_image_conditioned_prompts(self.text_tower, contexts, self.pieces,
                                                self.parameters_used.text_chunk_size)
        return ViewOutputs(tower["image_features"], F.normalize(text.float(), dim=-1), context_shift)

    def logits_of(self, view: ViewOutputs) -> torch.Tensor:
        image = F.normalize(view.image_features.float(), dim=-1)
        return self.logit_scale * torch.einsum("be,bce->bc", image, view.text_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_of(self.view_outputs(images))

    def augmented_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MoCo v3 views, AugMix views) of the batch, drawn from torch's global generator (seeded with the
        experiment's seed before training), so a run repeats with its seed."""
        seed = int(torch.randint(0, 2**62, ()))
        return self_supervised_views(images, self.pixel_mean, self.pixel_std, seed)

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor, moco_views: torch.Tensor,
                   augmix_views: torch.Tensor, sample_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every term of the loss (unweighted), the logits and (for more than one image) the simproj outputs of the
        original and MoCo v3 views, for the given views."""
        original, moco, augmix = (self.view_outputs(views) for views in (images, moco_views, augmix_views))
        logits = self.logits_of(original)
        terms = {
            "logits": logits,
            "ce": self.loss(logits.float(), labels, sample_weights),
            "moco_consistency": F.mse_loss(original.text_features, moco.text_features),
            "augmix_consistency": F.mse_loss(original.text_features, augmix.text_features),
        }
        if images.shape[0] > 1:
            terms["image_projections"] = self.simproj(F.normalize(original.image_features.float(), dim=-1))
            terms["moco_projections"] = self.simproj(F.normalize(moco.image_features.float(), dim=-1))
            terms["contrastive"] = simclr_loss(terms["image_projections"], terms["moco_projections"],
                                               self.parameters_used.temperature)
        else:  # one image: no negatives, and no batch statistics for BatchNorm
            terms["contrastive"] = logits.new_zeros(())
        return terms

    def training_loss(self, images, labels, sample_weights=None):
        moco_views, augmix_views = self.augmented_views(images)
        terms = self.loss_terms(images, labels, moco_views, augmix_views, sample_weights)
        parameters = self.parameters_used
        loss = (terms["ce"] + parameters.moco_consistency_weight * terms["moco_consistency"]
                + parameters.augmix_consistency_weight * terms["augmix_consistency"]
                + parameters.contrastive_weight * terms["contrastive"])
        return loss, terms["logits"]


register_method(
    MethodSpec(
        name="gopro",
        parameters_type=GOProParameters,
        build=GOProClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,
        hooks="text tower input: context tokens shifted per image by projections of every image block's token mean "
              "and std (read, not changed); trains on images, with MoCo v3 and AugMix views of each",
        description="GOPro: CoOp context plus a shift from the image tower's per-block style and content; "
                    "cross-entropy, prompt consistency across MoCo v3 and AugMix views, and SimCLR.",
        paper=Paper("Singha et al.", "GOPro: Generate and Optimize Prompts in CLIP using Self-Supervised Learning",
                    "BMVC 2023", "https://arxiv.org/abs/2308.11605"),
        hook_points=("text input",),
        selection_note=DASSL_LAST_EPOCH,
        verification=matches_authors_code(
            "tests/prompting/test_gopro_reference.py::test_outputs_loss_terms_and_gradients_match_reference",
            "mainaksingha01/GOPro at e284586",
            "Context shift, text features of the three views, logits, projections and every loss term within 1e-5, "
            "gradients of the context, projectors, rho and simproj within rounding (given the stored views)."),
    )
)
