"""MVLPT, multitask vision-language prompt tuning (Shen et al., WACV 2024): a prompt learned jointly on several
source tasks, averaged over seeds, initialises ordinary prompt tuning on a target task.

MVLPT is a prompt type plus where its prompt starts. The prompt types are this library's own, at MVLPT's settings:
- `mvlpt_coop` (the paper's MCoOp): CoOp (coop.py), 16 random context tokens, class token in the middle;
- `mvlpt_vpt` (MVPT): deep VPT (vpt.py), 16 tokens per layer, every layer of the vision tower;
- `mvlpt_ivlp` (MUPT): both towers (ivlp.py), 4 random text tokens at the input only and 4 deep vision tokens.
Hooks and loss are those of the prompt type: cross-entropy over the classes of the task being trained.

Two stages (models/experiments/multitask.py runs them; the catalog's `multitask:` section names the sources):
1. Source. One prompt is trained on the pooled few-shot sets of several source datasets: their class names are
   concatenated in source order and each source's labels offset by the classes before it (the code's
   `_task_class_idx`), batches are drawn from the pool, and the cross-entropy runs over ALL classes of all sources
   (the released scripts leave DATASET.MULTITASK_LABEL_PERTASK False; where it is True the code multiplies the other
   tasks' logits by 0, which is not a mask: a zero logit still takes softmax mass, so it is not implemented here).
   It is trained for seeds 1-3, and the seeds' prompts are averaged element-wise (`average_prompt_states`, as
   scripts/avg_ckpt.py averages every state_dict tensor).
2. Target. The same prompt type on one dataset that is not a source, its prompt initialised from the seed average
   (`initialise_from_source`, as train.py --model-dir with load_model), then trained as any experiment.
Published schedule (configs/trainers/MVLPT/vit_b16.yaml, the same for both stages): SGD lr 0.002, cosine, 200
epochs, one constant warm-up epoch at 1e-5, batch 32; shots 1, 5 and 20 in scripts/mvlpt/*.sh, the source at the
target's shots. The epoch is chosen on the few-shot val set (TEST.FINAL_MODEL best_val).

What this file decides where the authors' code (sIncerass/MVLPT 6fa518b, trainers/mvlpt.py) differs from the paper
or from us:
- MUPT. The code couples the text and vision prompts through a shared one-layer transformer of width 128 (train.py
  PROJECT_METHOD 'transformer', the UPT design) before they enter the towers; here MUPT is IVLP's independent prompts
  at MUPT's token counts (4 + 4, text shallow, vision deep): no coupling module.
- VPT tokens. The code inserts the vision prompts after ln_pre, between the class token and the patches, and
  initialises them Xavier-uniform; ours (vpt.py) append them before ln_pre (as MaPLe and IVLP) and draw N(0, 0.02).
  The order of tokens does not matter to the transformer (no positional embedding on prompts); ln_pre does.
  Only the source starts from that initialisation: every target starts from the source.
- Model selection. Both stages select the epoch on the few-shot val set, as best_val does; the code scores the
  source on each task's own classes and averages over tasks, ours on the pooled val set over all source classes.
- Loading. load_model loads with strict=False, so a prompt of another shape or name is silently skipped and the
  target starts from its random initialisation; `initialise_from_source` refuses any missing, extra or reshaped
  tensor. The class-name token buffers it skips are never part of our checkpoints (trainable_state).
- The VPT-only prompt text. With no text context the code writes "a photo of a {class}." for every task; our VPT
  reads the dataset's templates, and the pooled source uses "a photo of a {}." (SOURCE_TEMPLATES).
- fp16 (TRAINER.MVLPT.PREC) and the cut text context (TRAINER.CUT_CONTEXTLEN, which drops padding after the end
  token: the same features under the causal mask) are speed settings; we compute in the backbone's dtype.
- scripts/mvlpt/main_single_coopdata_cut.sh builds the --model-dir path from $PRETRAIN_DATASET and $CSC, which it
  never sets; here the target names its source through the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from models.prompting.methods.coop import CoOpClassifier, CoOpParameters
from models.prompting.methods.ivlp import IVLPClassifier, IVLPParameters
from models.prompting.methods.registry import (
    MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.methods.vpt import VPTClassifier, VPTParameters
from models.prompting.prompt_assembly import ClassTokenPosition

# The prompt text of the pooled source for prompt types that read templates (the code's VPT-only prefix).
SOURCE_TEMPLATES = ("a photo of a {}.",)


# The defaults are scripts/mvlpt/main_mt_coopdata_cut.sh's (and train.py's for what it leaves unset).
@dataclass(frozen=True)
class MCoOpParameters(CoOpParameters):
    n_context: int = 16  # COOP.N_CTX 16, randomly initialised (no CTX_INIT), one context for all classes (CSC False)
    context_init: str | None = None
    class_token_position: ClassTokenPosition = "middle"  # COOP.CLASS_TOKEN_POSITION 'middle'


@dataclass(frozen=True)
class MVPTParameters(VPTParameters):
    n_tokens: int = 16  # VPT.N_CTX 16
    prompt_depth: int = 12  # VPT.DEEP True: fresh tokens before every layer of the vision tower (12 on ViT-B/16)


@dataclass(frozen=True)
class MUPTParameters(IVLPParameters):
    n_text_context: int = 4  # COOP.N_CTX 4 (UPT), randomly initialised, at the text tower's input only
    n_vision_tokens: int = 4  # VPT.N_CTX 4, deep
    context_init: str | None = None
    text_prompt_depth: int = 1
    vision_prompt_depth: int = 12


# MVLPT's methods and the prompt type each trains (its name in this library)
PROMPT_TYPES = {"mvlpt_coop": "coop", "mvlpt_vpt": "vpt_deep", "mvlpt_ivlp": "ivlp"}


def average_prompt_states(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of every tensor over the seeds' prompt states (scripts/avg_ckpt.py). The states must
    hold the same names with the same shapes: prompts of different types or sizes are refused."""
    if not states:
        raise ValueError("no source prompt to average")
    names = sorted(states[0])
    for index, state in enumerate(states[1:], start=1):
        if sorted(state) != names:
            raise ValueError(f"source prompt {index} holds {sorted(state)}, the first {names}: not the same prompt "
                             "type")
        reshaped = [name for name in names if tuple(state[name].shape) != tuple(states[0][name].shape)]
        if reshaped:
            raise ValueError(f"source prompt {index}: {reshaped} differ in shape from the first prompt's")
    return {name: torch.stack([state[name] for state in states]).mean(dim=0) for name in names}


def initialise_from_source(classifier: PromptedClassifier, state: Mapping[str, torch.Tensor]) -> PromptedClassifier:
    """Copy a (seed-averaged) source prompt into the target classifier's trainable parameters, in place. Every
    trainable tensor must be in the state with its shape; a class-specific context (one per source class) cannot
    initialise a target with other classes and is refused, as is a prompt of another type."""
    parameters = {name: p for name, p in classifier.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(parameters) - set(state)), sorted(set(state) - set(parameters))
    if missing or extra:
        raise ValueError(f"the source prompt does not fit {type(classifier).__name__}: missing {missing}, "
                         f"not of this prompt {extra}")
    reshaped = [f"{name} {tuple(state[name].shape)} != {tuple(p.shape)}" for name, p in parameters.items()
                if tuple(state[name].shape) != tuple(p.shape)]
    if reshaped:
        raise ValueError(f"the source prompt's shapes differ from the target's ({'; '.join(reshaped)}); a "
                         "class-specific prompt cannot start a target with other classes")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state[name].to(device=parameter.device, dtype=parameter.dtype))
    return classifier


_PAPER = Paper("Shen et al.", "Multitask Vision-Language Prompt Tuning", "WACV 2024",
               "https://arxiv.org/abs/2211.11720")
_VERIFICATION = tested_property(
    "Before its first step the target's prompt equals the element-wise mean of the source seeds' prompts; the pooled "
    "source set's labels index the concatenated class names, every source contributing.",
    "tests/prompting/test_mvlpt.py::test_target_starts_from_the_seed_averaged_source_prompt")
_SELECTION_NOTE = ("As the authors' scripts (TEST.FINAL_MODEL best_val): the epoch best on the few-shot val set, in "
                   "both stages (the source on its pooled val set).")

for _name, _parameters, _build, _frozen, _hooks, _hook_points, _what in (
    ("mvlpt_coop", MCoOpParameters, CoOpClassifier, True,
     "text tower input: CoOp context (16 tokens, class in the middle), started from a multitask source prompt",
     ("text input",), "MCoOp"),
    ("mvlpt_vpt", MVPTParameters, VPTClassifier, False,
     "vision tower: deep VPT tokens (16 per layer), started from a multitask source prompt",
     ("image input", "image layers"), "MVPT"),
    ("mvlpt_ivlp", MUPTParameters, IVLPClassifier, False,
     "both towers: 4 text context tokens and 4 deep vision tokens (IVLP), started from a multitask source prompt",
     ("text input", "image input", "image layers"), "MUPT"),
):
    register_method(
        MethodSpec(
            name=_name,
            parameters_type=_parameters,
            build=_build,
            trains_prompts=True,
            frozen_image_encoder=_frozen,
            hooks=_hooks,
            description=f"MVLPT ({_what}): {PROMPT_TYPES[_name]} prompts initialised from a prompt trained jointly "
                        "on several source datasets and averaged over seeds; cross-entropy.",
            paper=_PAPER,
            hook_points=_hook_points,
            selection="few_shot_val",
            selection_note=_SELECTION_NOTE,
            verification=_VERIFICATION,
        )
    )
