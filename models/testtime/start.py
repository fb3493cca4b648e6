"""Where test-time tuning starts: a zero-shot context, or a trained checkpoint's learned prompt.

TPT tunes CoOp's context: from the words of a zero-shot prompt (TPT's --ctx_init a_photo_of_a, ImageNet's one
template) or from a trained CoOp context (TPT + CoOp, its --load). `context_init: template` (the default) takes the
words of the dataset's own template before the class name ("a sketch of a {}." -> "a sketch of a"), so that without
a step TPT predicts exactly what the dataset's zero-shot row predicts, as "a photo of a" does for ImageNet in the
paper; a template whose class name is not at its end ("a photo of a {} object.") falls back to "a photo of a". Other trained prompt methods start from their checkpoint and tune every
learned prompt parameter they have (CoCoOp: its context and meta-net, where the authors' code tunes the generated
context instead; MaPLe and VPT: their text and vision prompts, re-encoding the views at each step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.prompting.methods import get_method
from models.prompting.methods.registry import PromptedClassifier

FROM_TEMPLATE = "template"
FALLBACK_CONTEXT = "a photo of a"


def zero_shot_context(context_init: str, templates: list[str]) -> str:
    """The words the zero-shot start's context is initialised from (see the module docstring)."""
    if context_init != FROM_TEMPLATE:
        return context_init
    if len(templates) == 1 and templates[0].strip().endswith("{}.") and templates[0].count("{}") == 1:
        words = templates[0].strip()[: -len("{}.")].strip()
        if words:
            return words
    return FALLBACK_CONTEXT


def starting_classifier(checkpoint_dir: Path, backbone, classnames: list[str], templates: list[str],
                        context_init: str) -> tuple[PromptedClassifier, dict[str, Any]]:
    """(classifier to tune, description of the start); the checkpoint is the one the evaluation belongs to."""
    from models.experiments import build_classifier, load_prompt_checkpoint, read_checkpoint_config

    config = read_checkpoint_config(checkpoint_dir)
    method = config["method"]
    if method == "zero_shot":
        if not context_init or not context_init.strip():
            raise ValueError("test-time tuning from zero-shot needs a context_init ('template' or words such as "
                             "'a photo of a')")
        context_init = zero_shot_context(context_init, templates)
        classifier = build_classifier(backbone.model, backbone.tokenizer, "coop", {"context_init": context_init},
                                      classnames, templates)
        return classifier, {"start_method": "zero_shot", "tuned_method": "coop", "context_init": context_init,
                            "checkpoint_config_hash": config["config_hash"]}
    spec = get_method(method)
    if not spec.trains_prompts:
        raise ValueError(f"{checkpoint_dir}: method {method!r} learns no prompt to tune at test time")
    classifier, config = load_prompt_checkpoint(checkpoint_dir, backbone.model, backbone.tokenizer,
                                                classnames=classnames,
                                                backbone_weights_sha256=backbone.weights_sha256)
    if not classifier.trained_by_gradient:
        raise ValueError(f"{checkpoint_dir}: method {method!r} is fitted in closed form; test-time tuning needs "
                         "prompt parameters trained by gradient")
    return classifier, {"start_method": method, "tuned_method": method,
                        "checkpoint_config_hash": config["config_hash"]}
