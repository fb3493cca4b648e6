"""EPT, multi-space projection and prompt fusion (arXiv; an NLP paper on T5, GLUE and SuperGLUE), ported to CLIP's
text tower.

The paper is NLP-only: this is a port, implemented from the paper as summarised (no code was published; not
equivalent to any released code), and nothing here was evaluated by its authors on CLIP. The paper's soft prompt
is decomposed, as DePT does, into a short soft prompt and two low-rank matrices that update the frozen input token
embeddings, and the update is projected into several subspaces mixed by a gating network (it reports -14%
training time against a full-length prompt). Here, for class c's prompt

  [SOS] [p_1 .. p_m] [class tokens of c] [.] [EOS] [pad]     (CoOp's assembly, class token at the end)

the m-token short prompt P is learned (CoOp's context), and the frozen token embeddings E_c (every position but the
m learned ones: SOS, the class tokens, '.', EOS, padding) are updated by K low-rank products, one per subspace,

  E'_c = E_c + sum_k g_{c,k} A_k B_k,   A_k (L - m, r), B_k (r, D),   g_c = softmax(G mean(class tokens of c)),

with G = Linear(D, K) the gating network. Loss: cross-entropy. The text tower is frozen; the image tower is unused
(cached image features).

Left open by the paper (as summarised), and chosen here:
- what the gate reads: the mean of the class's own frozen name-token embeddings, so each class mixes the subspaces
  its own way (the paper's gate reads the input sentence; here the class name is the input) and the method still
  applies to class names never trained on;
- where the multi-space projection acts: on the low-rank update (K pairs A_k B_k), so that with every B_k = 0 the
  method is exactly the plain short prompt (CoOp with m tokens), which is also its initialisation: B_k start at
  zero (as LoRA), A_k at N(0, 1/r), G at zero (a uniform gate);
- sizes: m = 8 (half of CoOp's 16, the shorter prompt of the decomposition), r = 4, K = 3; position-wise rows of
  A_k over the whole frozen context (padding rows past the end-of-text token never reach the pooled feature and
  get no gradient);
- the schedule: CoOp's (catalog methods.yaml).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.prompt_assembly import tokenize_context_prompts
from models.prompting.text_passes import TextPassParameters, encode_context_prompts


@dataclass(frozen=True)
class EPTParameters(TextPassParameters):
    n_context: int = 8  # m, the short prompt
    context_init: str | None = None  # e.g. "a photo of a"; sets n_context to its token count
    rank: int = 4  # r of every A_k B_k
    n_projections: int = 3  # K subspaces mixed by the gate
    init_std: float = 0.02  # the short prompt's random initialisation
    init_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rank", "n_projections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ept: {name} must be an integer >= 1, got {value!r}")
        if self.context_init is None and (isinstance(self.n_context, bool) or not isinstance(self.n_context, int)
                                          or self.n_context < 1):
            raise ValueError(f"ept: n_context must be an integer >= 1, got {self.n_context!r}")


class EPTClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: EPTParameters):
        super().__init__(context)
        self.parameters_used = parameters
        self.pieces = tokenize_context_prompts(
            context.text_tower, context.tokenizer, context.classnames, parameters.n_context, parameters.context_init
        )
        width = context.text_tower.width
        frozen_positions = 1 + self.pieces.suffix_embeddings.shape[1]  # SOS and everything after the short prompt
        device = self.pieces.prefix_embeddings.device
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            initial = self.pieces.initial_or_random_context(width, parameters.init_std)
            down = torch.randn(parameters.n_projections, frozen_positions, parameters.rank) / math.sqrt(parameters.rank)
        self.context = nn.Parameter(initial.to(device))
        self.low_rank_positions = nn.Parameter(down.to(device))  # A_k, (K, L - m, r)
        self.low_rank_features = nn.Parameter(torch.zeros(parameters.n_projections, parameters.rank, width,
                                                          device=device))  # B_k, (K, r, D)
        self.gate = nn.Linear(width, parameters.n_projections).to(device)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        names = [self.pieces.suffix_embeddings[index, :count].float().mean(dim=0)
                 for index, count in enumerate(self.pieces.name_token_counts)]
        self.register_buffer("class_name_embeddings", torch.stack(names))  # (C, D), what the gate reads

    def gate_weights(self) -> torch.Tensor:
        """(C, K) softmax over the subspaces, per class."""
        return self.gate(self.class_name_embeddings).softmax(dim=-1)

    def embedding_update(self) -> torch.Tensor:
        """(C, L - m, D) sum_k g_{c,k} A_k B_k."""
        per_subspace = torch.einsum("kpr,krd->kpd", self.low_rank_positions, self.low_rank_features)
        return torch.einsum("ck,kpd->cpd", self.gate_weights(), per_subspace)

    def text_features(self) -> torch.Tensor:
        update = self.embedding_update()
        pieces = self.pieces
        dtype = pieces.prefix_embeddings.dtype
        updated = dataclasses.replace(pieces,
                                      prefix_embeddings=pieces.prefix_embeddings + update[:, :1].to(dtype),
                                      suffix_embeddings=pieces.suffix_embeddings + update[:, 1:].to(dtype))
        return encode_context_prompts(self.text_tower, self.context, updated, "end",
                                      text_chunk_size=self.parameters_used.text_chunk_size)


register_method(
    MethodSpec(
        name="ept",
        parameters_type=EPTParameters,
        build=EPTClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower input: a short learned prompt plus gated low-rank updates of the frozen token embeddings",
        description="EPT (NLP, ported): a short soft prompt plus K low-rank updates of the input token embeddings, "
                    "mixed per class by a gating network; cross-entropy.",
        paper=Paper("Lan et al.", "Efficient Prompt Tuning by Multi-Space Projection and Prompt Fusion",
                    "arXiv (NLP: T5)"),
        hook_points=("text input",),
        verification=tested_property(
            "With every low-rank B_k at zero it equals CoOp with the same short prompt, and the gate mixes the K "
            "projections as sum_k softmax(G x)_k A_k B_k (a hand-computed case).",
            "tests/prompting/test_ept.py::test_zero_low_rank_is_the_plain_short_prompt"),
        selection="last",
        selection_note="Not stated for CLIP (an NLP paper); the last epoch is kept, as CoOp's Dassl scripts test it.",
    )
)
