"""CTP/TFT, task-oriented multi-modal mutual learning (Long et al., ICCV 2023): class-aware text prompts (CTP) and
text-guided feature tuning (TFT), aligned contrastively.

Implemented from the paper as summarised (no code was published; not equivalent to any released code).
- CTP: CoCoOp shifts every class's context by the same image-conditioned vector; CTP injects label-related image
  information *per class*. Here the normalised image feature f is read as S tokens, u_{b,s} = (U f_b)_s (U: E -> S h),
  each class c has a query q_c = Q t_c from its frozen zero-shot text feature t_c (Q: E -> h), and
    shift_{b,c} = O sum_s softmax_s(q_c . u_{b,s} / sqrt(h)) u_{b,s}       (O: h -> D, the text width)
  is added to every context token of class c's prompt for image b, so each (image, class) pair has its own prompt
  (B x C text passes, as CoCoOp: models.prompting.text_passes' chunking, here with per-(image, class) contexts).
- TFT: the image feature attends to the class text features t'_{b,c} its own prompts produced,
    f'_b = f_b + O' sum_c softmax_c(q'(f_b) . k'(t'_{b,c}) / sqrt(h)) v'(t'_{b,c})     (f_b, t' normalised),
  and logits = exp(logit_scale) cos(f'_b, t'_{b,c}).
- Loss: cross-entropy + alignment_weight * a text-to-image contrastive term over the batch: the text feature of each
  image's own class, t'_{b,y_b}, against the tuned features f'_{b'} of every image of the batch, at CLIP's
  temperature, with the images of the same label as (uniformly weighted) positives:
    L_align = mean_b [ -sum_{b': y_b' = y_b} (1 / n_{y_b}) log softmax_{b'}(s cos(t'_{b,y_b}, f'_{b'})) ],
  s = exp(logit_scale).
  The cross-entropy is the image-to-text direction of the same alignment.

Left open by the paper (as summarised), and chosen here:
- the attention's sizes: S = 4 image tokens, hidden width h = E // 16 (CoCoOp's meta-net reduction), one head;
  keys and values of CTP's image tokens share U, TFT has separate key and value maps;
- the output maps O and O' start at zero, so at initialisation the method is CoOp with its context ("a photo of a")
  and the untouched image feature: the identity test;
- the query of CTP reads the normalised template ensemble of the class (frozen), so the method applies to class names
  never trained on (base-to-new);
- the contrastive term's form above, weight 1.0; with one image per batch it is 0, so the schedule uses batch 4;
- CoCoOp's schedule otherwise (SGD lr 0.002, 10 epochs, one warm-up epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.prompt_assembly import tokenize_context_prompts
from models.prompting.text_passes import TextPassParameters, encode_image_conditioned_prompts


@dataclass(frozen=True)
class CtpTftParameters(TextPassParameters):
    n_context: int = 4
    context_init: str | None = "a photo of a"  # sets n_context to its token count; None: random N(0, init_std)
    image_tokens: int = 4  # S, the tokens CTP's class queries attend over
    attention_reduction: int = 16  # hidden width h = joint embedding dim // reduction
    alignment_weight: float = 1.0
    init_std: float = 0.02
    init_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("image_tokens", "attention_reduction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ctp_tft: {name} must be an integer >= 1, got {value!r}")
        weight = self.alignment_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"ctp_tft: alignment_weight must be a finite number >= 0, got {weight!r}")


def text_to_image_alignment(text: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                            scale: torch.Tensor) -> torch.Tensor:
    """mean_b of the cross-entropy of softmax_{b'}(scale cos(text_b, images_b')) against the uniform distribution over
    the images of b's label (text (B, E): each image's own-class text feature; images (B, E))."""
    similarity = scale * F.normalize(text.float(), dim=-1) @ F.normalize(images.float(), dim=-1).t()
    same_label = (labels[:, None] == labels[None, :]).float()
    targets = same_label / same_label.sum(dim=1, keepdim=True)
    return -(targets * similarity.log_softmax(dim=1)).sum(dim=1).mean()


class CtpTftClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: CtpTftParameters):
        super().__init__(context)
        self.parameters_used = parameters
        self.pieces = tokenize_context_prompts(
            context.text_tower, context.tokenizer, context.classnames, parameters.n_context, parameters.context_init
        )
        text_width, dim = context.text_tower.width, joint_embedding_dim(context.text_tower)
        hidden = dim // parameters.attention_reduction
        if hidden < 1:
            raise ValueError(f"ctp_tft: attention_reduction {parameters.attention_reduction} leaves no hidden unit "
                             f"for embedding dim {dim}")
        self.hidden, self.n_image_tokens = hidden, parameters.image_tokens
        device = self.pieces.prefix_embeddings.device
        self.register_buffer("class_text_features",
                             F.normalize(context.template_ensemble().float(), dim=-1).to(device))
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            initial = self.pieces.initial_or_random_context(text_width, parameters.init_std)
            self.image_tokens = nn.Linear(dim, parameters.image_tokens * hidden)  # CTP: U
            self.class_query = nn.Linear(dim, hidden)  # CTP: Q
            self.prompt_shift = nn.Linear(hidden, text_width)  # CTP: O
            self.feature_query = nn.Linear(dim, hidden)  # TFT: q'
            self.text_key = nn.Linear(dim, hidden)  # TFT: k'
            self.text_value = nn.Linear(dim, hidden)  # TFT: v'
            self.feature_shift = nn.Linear(hidden, dim)  # TFT: O'
        for output in (self.prompt_shift, self.feature_shift):
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)
        self.to(device)
        self.context = nn.Parameter(initial.to(device))

    def text_features(self) -> torch.Tensor:
        raise NotImplementedError("CTP's text features depend on the image: use class_aware_text_features")

    def class_shifts(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, D) CTP's shift of each class's context for each (normalised) image feature."""
        tokens = self.image_tokens(image).view(image.shape[0], self.n_image_tokens, self.hidden)  # (B, S, h)
        queries = self.class_query(self.class_text_features)  # (C, h)
        attention = torch.einsum("ch,bsh->bcs", queries, tokens).div(math.sqrt(self.hidden)).softmax(dim=-1)
        return self.prompt_shift(torch.einsum("bcs,bsh->bch", attention, tokens))

    def class_aware_text_features(self, image: torch.Tensor) -> torch.Tensor:
        """Raw text features (B, C, E) of the class-aware prompts, one per (image, class)."""
        contexts = self.context[None, None] + self.class_shifts(image)[:, :, None]  # (B, C, n, D)
        return encode_image_conditioned_prompts(self.text_tower, contexts, self.pieces,
                                                self.parameters_used.text_chunk_size)

    def tuned_image_features(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, E) TFT: the normalised image feature plus what it reads from its class text features (B, C, E)."""
        weights = torch.einsum("bh,bch->bc", self.feature_query(image), self.text_key(text))
        weights = weights.div(math.sqrt(self.hidden)).softmax(dim=-1)
        return image + self.feature_shift(torch.einsum("bc,bch->bh", weights, self.text_value(text)))

    def features(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tuned image features (B, E), normalised class-aware text features (B, C, E))."""
        image = F.normalize(image_features.float(), dim=-1)
        text = F.normalize(self.class_aware_text_features(image).float(), dim=-1)
        return self.tuned_image_features(image, text), text

    def logits_of(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * torch.einsum("be,bce->bc", F.normalize(image, dim=-1), text)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logits_of(*self.features(image_features))

    def training_loss(self, image_features, labels, sample_weights=None):
        image, text = self.features(image_features)
        logits = self.logits_of(image, text)
        loss = self.loss(logits.float(), labels, sample_weights)
        weight = self.parameters_used.alignment_weight
        if weight:
            own_class_text = text[torch.arange(text.shape[0], device=text.device), labels]
            loss = loss + weight * text_to_image_alignment(own_class_text, image, labels, self.logit_scale)
        return loss, logits


register_method(
    MethodSpec(
        name="ctp_tft",
        parameters_type=CtpTftParameters,
        build=CtpTftClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower input: per-class image-conditioned context shifts; feature space: the image feature "
              "attends to the class text features",
        description="CTP/TFT: class-aware prompts (each class's query attends over the image feature's tokens) and "
                    "text-guided feature tuning, cross-entropy plus a text-to-image contrastive term.",
        paper=Paper("Long et al.", "Task-Oriented Multi-Modal Mutual Learning for Vision-Language Models",
                    "ICCV 2023"),
        hook_points=("text input", "feature space"),
        verification=tested_property(
            "With both output maps at zero it equals CoOp with the same context; once they move, the classes' prompt "
            "shifts differ; the contrastive term equals a hand computation on three images.",
            "tests/prompting/test_ctp_tft.py::test_zero_outputs_are_coop_and_shifts_differ_by_class"),
        selection="last",
        selection_note="Not stated in the paper (as summarised); the last epoch is kept, as CoCoOp's Dassl scripts.",
    )
)
