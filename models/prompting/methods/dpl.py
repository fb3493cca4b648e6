"""DPL, Decoupled Prompt Learning (Xu et al., arXiv 2308.10061), on CLIP's text tower (CoOp-like).

Implemented from the paper as summarised (no public code): the self-attention over [instances X; prompts P] is split
into X->X, X->P, P->X and P->P; X->X is kept exactly as in the frozen model, the other parts are computed apart and
combined, and the textual prompts are language-conditioned (they attend to the text tokens of the class prompt).
Here (models/prompting/attention_variants.py, carried side prompts), in every block of the text tower:

    X' from  O_X = softmax_X(Q_X K_X^T / sqrt(d) + causal mask) V_X  +  g_h * softmax_P(Q_X K_P^T / sqrt(d)) V_P
    P' from  O_P = softmax_[X;P](Q_P [K_X; K_P]^T / sqrt(d)) [V_X; V_P]      (P->X and P->P, one softmax)

then each stream through the block's out_proj, residual and MLP. X are the tokens of the dataset's first template
filled with the class name ("a photo of a {class}."), at their own positions, as the frozen model encodes them; P are
n_context learned tokens beside them, entering at the first block and carried (updated) through every block, so that
by the later blocks they are conditioned on the class prompt's words; prompt_depth J > 1 gives fresh prompts to
blocks 1..J-1 (replacing the carried ones, as IVLP's deep prompts), carried on past J. Image tower: frozen (cached
features). Loss: cross-entropy. Classes go through the text tower `text_chunk_size` per pass.

What the summary leaves open, and what we chose:
- the combination of X->X and X->P: X->X unchanged plus a gated X->P term, softmax over the prompts alone, one gate
  per head and block, zero at initialisation (the exact split of the global softmax, with the mixing weight lambda
  replaced by the gate; attention_variants' docstring), so that X's attention among themselves is the frozen model's
  whatever P is;
- the prompts' own update (P->X, P->P): one softmax over [X; P] with the block's frozen weights, unmasked (the
  prompts read every word of the class prompt, the class name after them included: that is the language
  conditioning), but never the padding after a text's end-of-text token (a class's features would otherwise depend
  on which classes share its pass); the prompts take no position (no positional embedding), as deep VPT's tokens;
- X's tokens still see only earlier tokens among themselves (CLIP's causal mask), and every X token sees all prompts;
- the template: X is the hand-crafted prompt rather than CoOp's "X X X X {class}." placeholders, so that the gates'
  identity is zero-shot CLIP with that template; the prompts are drawn N(0, init_std^2) (chosen);
- defaults: 4 prompt tokens, depth 1, CoOp's base-to-new schedule (lr 0.002, batch 32; chosen: the paper's were
  not read); the image-tower variant the paper also describes is not offered here.

Identity: with the gates at zero (initialisation) the class text features are the frozen model's of the template,
so the logits are zero-shot CLIP's with that template, whatever the prompts; the prompts' gradient is zero on the
first step (the gates' is not), as a LoRA with B = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.prompting.attention_variants import PromptGates, encode_text_with_side_prompts
from models.prompting.deep_prompts import check_prompt_depth
from models.prompting.lora import require_hookable_blocks
from models.prompting.methods.apt import check_prompt_length
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.prompt_assembly import require_prompts_fit
from models.prompting.text_passes import TextPassParameters, encode_in_passes


@dataclass(frozen=True)
class DPLParameters(TextPassParameters):
    n_context: int = 4  # learned prompt tokens beside the class prompt (chosen)
    prompt_depth: int = 1  # J: fresh prompts at blocks 0..J-1, carried on after; at most the text tower's blocks
    template: str | None = None  # X's text with one "{}"; None: the dataset's first template
    init_std: float = 0.02
    init_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prompt_length(self.n_context, "n_context", "dpl")
        if not isinstance(self.prompt_depth, int) or isinstance(self.prompt_depth, bool) or self.prompt_depth < 1:
            raise ValueError(f"dpl: prompt_depth must be an integer >= 1, got {self.prompt_depth!r}")
        if self.template is not None and (not isinstance(self.template, str) or self.template.count("{}") != 1):
            raise ValueError(f"dpl: template must be a string with exactly one '{{}}', got {self.template!r}")


class DPLClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: DPLParameters):
        text_tower = context.text_tower
        check_prompt_depth(parameters.prompt_depth, len(text_tower.transformer.resblocks), "text")
        blocks = require_hookable_blocks(text_tower, "text tower", None, "dpl", type(context.clip_model).__name__)
        super().__init__(context)
        self.parameters_used = parameters
        template = parameters.template or context.templates[0]
        texts = [template.format(name) for name in context.classnames]
        require_prompts_fit(context.tokenizer, dict(zip(context.classnames, ([t] for t in texts))),
                            text_tower.context_length)
        device = text_tower.token_embedding.weight.device
        token_ids = context.tokenizer(texts).to(device)
        with torch.no_grad():
            self.register_buffer("token_ids", token_ids, persistent=False)
            self.register_buffer("token_embeddings", text_tower.embed_tokens(token_ids), persistent=False)
        with torch.random.fork_rng(devices=[]):  # seeded without shifting the global RNG
            torch.manual_seed(parameters.init_seed)
            self.layer_prompts = nn.ParameterList(
                [nn.Parameter(torch.randn(parameters.n_context, text_tower.width, device=device) * parameters.init_std)
                 for _ in range(parameters.prompt_depth)])
        self.gates = PromptGates(len(blocks), blocks[0].attn.num_heads, device)

    def text_features(self) -> torch.Tensor:
        prompts = list(self.layer_prompts)

        def encode_classes(start: int, stop: int) -> torch.Tensor:
            return encode_text_with_side_prompts(self.text_tower, self.token_embeddings[start:stop],
                                                 self.token_ids[start:stop], prompts, self.gates, carry=True)

        return encode_in_passes(encode_classes, self.token_ids.shape[0], self.parameters_used.text_chunk_size)


register_method(
    MethodSpec(
        name="dpl",
        parameters_type=DPLParameters,
        build=DPLClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower blocks: prompts beside the class prompt, X->X frozen, gated X->P, prompts read the words",
        description="DPL: decoupled text-prompt attention (frozen X->X, gated X->P, language-conditioned prompts), "
                    "cross-entropy.",
        paper=Paper("Xu et al.", "DPL: Decoupled Prompt Learning for Vision-Language Models", "arXiv 2023",
                    "https://arxiv.org/abs/2308.10061"),
        hook_points=("text layers",),
        selection_note="No public code; as CoOp's protocol, the last epoch is tested, no validation.",
        verification=tested_property(
            "The class prompt's tokens attend among themselves exactly as in the frozen model whatever the prompts; "
            "with its gates at zero (initialisation) its logits are zero-shot CLIP's with the template.",
            "tests/prompting/test_dpl.py::test_instance_attention_is_the_frozen_models_whatever_the_prompts"),
    )
)
