"""ConES (Huang et al., 2023): concept embeddings searched directly in the text tower's output space.

Implemented from the paper as summarised (no code was published; this is not equivalent to any released code). The
paper drops the text encoder: each concept (here, each class) has an embedding w_c in the space where the text
tower's features live, initialised from the text features of its prompt and then optimised by gradient descent,
so no text-encoder pass happens during training (it reports 1 h -> 10 min against textual inversion for
personalised generation; detection and segmentation via GLIP-style heads). For CLIP classification that is:

  w_c(0) = zero-shot text feature of class c (the normalised template ensemble, as zero_shot.py's buffer),
  logits = exp(logit_scale) cos(f, w_c),   loss = cross-entropy,

with CLIP's logit scale frozen, so at initialisation its logits equal zero-shot CLIP's exactly. Hooks: none in the
towers ("feature space"); the text tower runs once, when the classifier is built (through the text cache where
there is one), and never during training or evaluation.

Left open by the paper (as summarised), and chosen here:
- the initial embedding: the dataset's templates ensembled (the mean of the normalised template features), the
  classifier zero-shot CLIP evaluates with; the paper initialises from one prompt's text feature;
- no regulariser towards the initial embeddings and no bias term;
- the schedule (catalog methods.yaml, "chosen"): Adam lr 1e-3, batch 32, CoOp's epochs per shot count, one warm-up
  epoch; SGD at CoOp's 0.002 barely moves unit-norm embeddings under cosine logits.

How it differs from the two closest methods in this library:
- linear_probe.py: a logistic regression fitted in closed form (lbfgs) on L2-normalised image features, weights
  starting at zero (no text), with a bias, unnormalised weights (logits are dot products, no temperature), and an
  L2 penalty whose strength C is searched on the val subset. ConES starts from the text features, scores cosines at
  CLIP's temperature, has no bias and no penalty, and trains by SGD-style steps through the shared loop.
- clap.py (CLAP, and ZS-LP with constraint none): the same cosine-at-CLIP's-temperature classifier, but initialised
  from the mean of the *raw* template features (norm about the text tower's output norm, which sets how far a step
  moves a prototype), with CLAP's class-adaptive penalty lambda_c ||w_c - t_c||^2 (lambda from zero-shot
  confidence), and its authors' schedule (SGD lr 0.1, batch 256, 300 epochs over 20 augmented views per image).
  ConES with this library's choices is closest to ZS-LP: it differs by starting on the normalised ensemble (the
  exact zero-shot classifier), by Adam and by the view recipe (original and mirrored views, as CoOp).
The embeddings are per class, so the method is class-specific (no transfer to new classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)


@dataclass(frozen=True)
class ConESParameters:
    pass


class ConESClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: ConESParameters):
        super().__init__(context)
        self.parameters_used = parameters
        initial = context.template_ensemble().float().to(self.logit_scale.device)
        self.register_buffer("initial_concepts", initial)
        self.concepts = nn.Parameter(initial.clone())

    def text_features(self) -> torch.Tensor:
        return self.concepts


register_method(
    MethodSpec(
        name="cones",
        parameters_type=ConESParameters,
        build=ConESClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="none in the towers: one concept embedding per class in the text output space, from zero-shot's",
        description="ConES: per-class concept embeddings in the text tower's output space, initialised with the "
                    "zero-shot text features and trained by cross-entropy without any text-encoder pass.",
        class_specific=lambda parameters: True,
        paper=Paper("Huang et al.", "ConES: Concept Embedding Search for Parameter Efficient Tuning Large Vision "
                    "Language Models", "arXiv 2023"),
        hook_points=("feature space",),
        verification=tested_property(
            "At initialisation its logits equal zero-shot CLIP's; training never calls the text tower, which gets "
            "no gradient, and only the concept embeddings move.",
            "tests/prompting/test_cones.py::test_training_never_calls_the_text_tower"),
        selection="last",
        selection_note="Not stated in the paper (as summarised); the last epoch is kept.",
    )
)
