"""PRE (Pham et al., "PRE: Vision-Language Prompt Learning with Reparameterization Encoder", arXiv 2309.07760):
CoOp whose context vectors are produced by a small prompt encoder from learnable inputs.

Hooks: as CoOp (learned context tokens in the text tower's input); loss: cross-entropy. The learnable input context
is CoOp's context parameter (same initialisation, words or random); the prompt encoder reparameterises it with a
residual connection, context = inputs + encoder(inputs), so a zero encoder output gives CoOp exactly. The context is
unified (shared by all classes), so a learned prompt applies to new classes (base-to-new, cross-dataset).

Encoders: "lstm", a bidirectional LSTM run over the context tokens as one sequence, then a linear projection of the
two directions back to the text width; "mlp", Linear(width, hidden) ReLU Linear(hidden, width) on each token.
`zero_init_output` zeroes the last linear layer (the output projection), which makes PRE start at CoOp.

Published settings (the authors' repository github.com/minhanh151/PRE: trainers/pre.py,
configs/trainers/PRE/vit_b16_ep50_ctxv1.yaml, PRE.md): context initialised from "a photo of a" (4 tokens), unified;
encoder a 1-layer bi-LSTM with hidden size width // 2 per direction and a residual connection, one network shared by
all tokens (the run folders are named PRE_LSTM1_True_False); the MLP variant has a 64-wide bottleneck, ReLU, no
layer norm or dropout; SGD lr 0.002, batch 32, 50 epochs, 1 constant warm-up epoch at 1e-5, cosine; base-to-new
with 16 shots. Momentum 0.9 and weight decay 5e-4 are Dassl's defaults (the config does not override them).
What we had to choose ourselves: the authors' bi-LSTM has no output projection (its two width/2 directions
concatenate back to the width); ours adds Linear(2 * hidden, width) so that any hidden size works and the output
can start at zero; it keeps PyTorch's default initialisation unless zero_init_output (the authors' encoder is
randomly initialised, so the default does not start at CoOp). The encoder's initialisation is seeded by init_seed.
The LSTM dropout of the authors' code (0.05) does nothing with one layer and is left out, as are their 2-layer,
transformer and one-network-per-token variants.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass

import torch
from torch import nn

from models.prompting.methods.coop import CoOpClassifier, CoOpParameters
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH, ClassifierContext, MethodSpec, Paper, register_method, tested_property,
)

ENCODER_TYPES = ("lstm", "mlp")
MLP_HIDDEN_SIZE = 64  # the authors' bottleneck


@dataclass(frozen=True)
class PREParameters(CoOpParameters):
    n_context: int = 4
    context_init: str | None = "a photo of a"
    encoder_type: str = "lstm"
    hidden_size: int | None = None  # None: the authors' sizes (bi-LSTM width // 2 per direction, MLP 64)
    zero_init_output: bool = False  # True: the encoder's output layer starts at zero, so PRE starts as CoOp

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder_type not in ENCODER_TYPES:
            raise ValueError(f"pre: encoder_type must be one of {ENCODER_TYPES}, got {self.encoder_type!r}")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"pre: hidden_size must be >= 1 (or null for the published size), got {self.hidden_size}")
        if self.class_specific_context:
            raise ValueError("pre learns one context shared by all classes; class_specific_context must be false")


class PromptEncoder(nn.Module):
    """The residual branch of the reparameterisation: (n_context, width) -> (n_context, width)."""

    def __init__(self, width: int, encoder_type: str, hidden_size: int | None, zero_init_output: bool):
        super().__init__()
        self.encoder_type = encoder_type
        if encoder_type == "lstm":
            hidden_size = hidden_size or width // 2
            self.lstm = nn.LSTM(width, hidden_size, batch_first=True, bidirectional=True)
            self.output = nn.Linear(2 * hidden_size, width)
        else:
            hidden_size = hidden_size or MLP_HIDDEN_SIZE
            self.hidden = nn.Sequential(nn.Linear(width, hidden_size), nn.ReLU())
            self.output = nn.Linear(hidden_size, width)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.encoder_type == "lstm":
            # the context tokens are one sequence, read in both directions; in fp32 outside autocast: oneDNN has no
            # bf16 LSTM on CPUs without AVX-512 BF16 ("could not create a primitive descriptor"), and a 16-token
            # LSTM costs nothing at full precision
            device_type = inputs.device.type
            full_precision = (torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda")
                              else contextlib.nullcontext())  # (meta: the device-placement test)
            with full_precision:
                hidden = self.lstm(inputs.float().unsqueeze(0))[0].squeeze(0)
        else:
            hidden = self.hidden(inputs)
        return self.output(hidden)


class PREClassifier(CoOpClassifier):
    """CoOp's `context` parameter is the encoder's learnable input; the prompts use context_vectors()."""

    def __init__(self, context: ClassifierContext, parameters: PREParameters):
        super().__init__(context, parameters)
        # Seeded apart from the global generator, so the encoder's initialisation depends on init_seed only.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            encoder = PromptEncoder(context.text_tower.width, parameters.encoder_type, parameters.hidden_size,
                                    parameters.zero_init_output)
        self.encoder = encoder.to(self.context.device)

    def context_vectors(self) -> torch.Tensor:
        return self.context + self.encoder(self.context)

    def text_features(self) -> torch.Tensor:
        return self.encode_prompts(self.context_vectors())


register_method(
    MethodSpec(
        name="pre",
        parameters_type=PREParameters,
        build=PREClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower input: context tokens = inputs + prompt encoder(inputs), around the class name",
        description="PRE: CoOp's unified context reparameterised by a residual bi-LSTM or MLP prompt encoder.",
        paper=Paper("Pham et al.", "PRE: Vision-Language Prompt Learning with Reparameterization Encoder",
                    "arXiv 2023", "https://arxiv.org/abs/2309.07760"),
        hook_points=("text input",),
        selection_note=DASSL_LAST_EPOCH,
        verification=tested_property(
            "With a zero output layer the encoder adds nothing and PRE is CoOp with the same context.",
            "tests/prompting/test_pre.py::test_zero_output_layer_gives_coop_with_the_same_context"),
    )
)
