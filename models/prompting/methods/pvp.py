"""PVP, pre-trained visual parameter-efficient tuning (Song et al., arXiv 2023, "PVP: Pre-trained Visual
Parameter-Efficient Tuning"): the prompt modules are first trained on upstream data, then ordinary prompt tuning on a
downstream task starts from them instead of from a random initialisation (which the paper blames for
parameter-efficient tuning's weakness with few labels).

Implemented from the brief's description (METHODS-2.md and PAPERS.md hold no summary of PVP; no code), not from any
authors' code. The paper pre-trains the modules of a ViT with supervised classification on ImageNet; here the
upstream data is the embedded image-caption corpus and its supervision the captions' class words: every pair is
labelled by its caption-derived label (the subject caption, models/prompting/upstream.py), and the prompt is trained
with cross-entropy over all those labels through the shared training loop (`pretrain`), i.e. the ImageNet-style
classification the paper uses, on caption classes. Then the downstream prompt starts from it bit for bit
(mvlpt.initialise_from_source) and trains as its prompt type does: same hooks, loss, schedule.
Registered for shallow VPT (`pvp_vpt`: the visual prompts the paper pre-trains) and CoOp (`pvp_coop`: the text
context, the same idea on the text tower). Chosen: the upstream schedule (the initialisation entry's
`optimization:`), an image-caption contrastive loss is not used (caption classes are what the corpus gives
directly, and it keeps the pre-training the downstream objective).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from models.prompting.methods.coop import CoOpClassifier, CoOpParameters
from models.prompting.methods.registry import MethodSpec, Paper, register_method, tested_property
from models.prompting.methods.vpt import VPTClassifier, VPTShallowParameters
from models.prompting.upstream import UpstreamData


@dataclass(frozen=True)
class PVPCoOpParameters(CoOpParameters):
    """CoOp's defaults (chosen)."""


@dataclass(frozen=True)
class PVPVPTParameters(VPTShallowParameters):
    """Shallow VPT's defaults (chosen)."""


def pretrain(classifier, data: UpstreamData, optimization, device="cpu",
             on_epoch: Callable[[int, float, float], None] | None = None):
    """Train the classifier's prompt (in place; built over data.classnames) on the upstream pairs' caption classes
    through the shared loop; returns its TrainingHistory."""
    from models.prompting.training import train_prompt_parameters

    if len(classifier.classnames) != len(data.classnames):
        raise ValueError(f"the classifier scores {len(classifier.classnames)} classes, the upstream data "
                         f"{len(data.classnames)}")
    return train_prompt_parameters(classifier, data.inputs, data.labels, optimization, on_epoch=on_epoch,
                                   device=device)


_PAPER = Paper("Song et al.", "PVP: Pre-trained Visual Parameter-Efficient Tuning", "arXiv 2023",
               "https://arxiv.org/abs/2304.13639")
for _name, _parameters, _build, _frozen, _hooks, _hook_points in (
    ("pvp_vpt", PVPVPTParameters, VPTClassifier, False,
     "vision tower input: shallow VPT tokens pre-trained on the corpus' caption classes", ("image input",)),
    ("pvp_coop", PVPCoOpParameters, CoOpClassifier, True,
     "text tower input: CoOp context pre-trained on the corpus' caption classes", ("text input",)),
):
    register_method(MethodSpec(
        name=_name,
        parameters_type=_parameters,
        build=_build,
        trains_prompts=True,
        frozen_image_encoder=_frozen,
        hooks=_hooks,
        description="PVP: prompt modules pre-trained on the upstream corpus (caption classes, cross-entropy) before "
                    "ordinary downstream prompt tuning from them.",
        class_specific=lambda parameters: getattr(parameters, "class_specific_context", False),
        paper=_PAPER,
        hook_points=_hook_points,
        selection_note="Not known from the paper here; as the prompt type's Dassl scripts, the last epoch.",
        verification=tested_property(
            "The pre-training loss falls on a micro corpus, and a downstream prompt starts bit for bit at the stored "
            "pre-trained prompt.",
            "tests/prompting/test_pvp.py::test_pretraining_loss_falls_on_a_micro_corpus"),
    ))
