"""KAPT, knowledge-aware prompt tuning (Kan et al., ICCV 2023): a discrete knowledge prompt of key words from class
descriptions beside a learned continuous prompt, and an adaptation head on the image side.

Implemented from the paper as summarised (no code was published; not equivalent to any released code).
- Text: class c's prompt is  [SOS] [p_1 .. p_n] [c], [k_c1], [k_c2], ... [.] [EOS]  : the learned continuous prompt
  (CoOp's context, n = 4 from "a photo of a") followed by the class name and its key phrases k_c, the discrete
  knowledge prompt, whose token embeddings stay frozen. The key phrases come from the dataset's descriptions file,
  assets_catalog/descriptions/<Dataset>.yaml (models/prompting/class_descriptions.py; the paper extracts key words
  from Wikipedia-style descriptions; the embedded world's files are written from its corpus vocabulary). A dataset
  without a file falls back to its (first) template around the class name as the discrete prompt, e.g.
  [p_1 .. p_n] "a blurry photo of a circle."; `knowledge_source` says which (the file, or "template") and the
  checkpoint config records it ("knowledge_prompt").
- Image: an adaptation head on the normalised image feature f, residual, f' = f + W_up ReLU(W_down f), with W_up
  starting at zero.
- Logits = exp(logit_scale) cos(f', t_c); loss: cross-entropy.

Left open by the paper (as summarised), and chosen here:
- the paper's image head aggregates salient *attentive visual cues*, i.e. patch-level tokens weighted by attention;
  PromptLab caches only the pooled image feature of a frozen image tower, and reading patch tokens would put the
  image tower in every training step. The head here reads the pooled feature (which CLIP's attention pooling already
  aggregates from the patches), a residual bottleneck (width // 4) started at zero, so that at initialisation the
  method is the text side alone, and it keeps the feature cache. A patch-token head is left for later;
- where the knowledge goes: after the class name, comma-separated, all of the file's phrases (a prompt longer than
  the text context is refused when the classifier is built, naming the class);
- continuous prompt: 4 tokens from "a photo of a" (so at initialisation the text side encodes the plain sentence
  "a photo of a <class>, <key phrases>."); schedule: CoOp's (catalog methods.yaml; CoCoOp's 10 epochs assume batch 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.prompt_assembly import tokenize_context_prompts
from models.prompting.text_passes import TextPassParameters, encode_context_prompts

TEMPLATE_FALLBACK = "template"


@dataclass(frozen=True)
class KaptParameters(TextPassParameters):
    n_context: int = 4
    context_init: str | None = "a photo of a"  # sets n_context to its token count; None: random N(0, init_std)
    head_reduction: int = 4  # hidden width of the image head = embedding dim // reduction
    init_std: float = 0.02
    init_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.head_reduction
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"kapt: head_reduction must be an integer >= 1, got {value!r}")


def knowledge_texts(context: ClassifierContext) -> tuple[list[str], str]:
    """(each class's discrete prompt text after the learned context, where it came from): the class name and its key
    phrases from the dataset's descriptions, else the first template around the class name."""
    descriptions = context.class_descriptions
    if descriptions is not None:
        phrases = descriptions.for_classes(list(context.classnames))  # refuses a class without a description
        return [", ".join([name, *listed]) for name, listed in zip(context.classnames, phrases)], descriptions.file
    if not context.templates:
        raise ValueError("kapt: no class descriptions and no template to fall back to")
    template = context.templates[0]
    return [template.format(name).strip().rstrip(".") for name in context.classnames], TEMPLATE_FALLBACK


class KaptClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: KaptParameters):
        super().__init__(context)
        self.parameters_used = parameters
        self.knowledge_texts, self.knowledge_source = knowledge_texts(context)
        self.pieces = tokenize_context_prompts(
            context.text_tower, context.tokenizer, self.knowledge_texts, parameters.n_context, parameters.context_init
        )
        dim = joint_embedding_dim(context.text_tower)
        hidden = dim // parameters.head_reduction
        if hidden < 1:
            raise ValueError(f"kapt: head_reduction {parameters.head_reduction} leaves no hidden unit for embedding "
                             f"dim {dim}")
        device = self.pieces.prefix_embeddings.device
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            initial = self.pieces.initial_or_random_context(context.text_tower.width, parameters.init_std)
            self.image_head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)).to(device)
        nn.init.zeros_(self.image_head[2].weight)
        nn.init.zeros_(self.image_head[2].bias)
        self.context = nn.Parameter(initial.to(device))

    def text_features(self) -> torch.Tensor:
        return encode_context_prompts(self.text_tower, self.context, self.pieces, "end",
                                      text_chunk_size=self.parameters_used.text_chunk_size)

    def adapted_image_features(self, image_features: torch.Tensor) -> torch.Tensor:
        image = F.normalize(image_features.float(), dim=-1)
        return image + self.image_head(image)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.adapted_image_features(image_features), self.text_features())


register_method(
    MethodSpec(
        name="kapt",
        parameters_type=KaptParameters,
        build=KaptClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower input: learned context before the class name and its frozen key phrases; feature space: a "
              "residual head on the image feature",
        description="KAPT: a learned continuous prompt plus a discrete knowledge prompt of key phrases per class "
                    "(assets_catalog/descriptions), and a zero-initialised residual image head; cross-entropy.",
        paper=Paper("Kan et al.", "Knowledge-Aware Prompt Tuning for Generalizable Vision-Language Models",
                    "ICCV 2023"),
        hook_points=("text input", "feature space"),
        verification=tested_property(
            "Its knowledge prompt's tokens are the class name and key phrases of the descriptions file it names (at "
            "initialisation the text features are those of the plain sentence), the template stands in without a "
            "file, and the zero-initialised image head leaves the image feature unchanged.",
            "tests/prompting/test_kapt.py::test_knowledge_prompt_tokens_are_the_files"),
        selection="last",
        selection_note="Not stated in the paper (as summarised); the last epoch is kept, as CoCoOp's Dassl scripts.",
        reads_class_descriptions=True,
    )
)
