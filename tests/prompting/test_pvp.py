"""PVP on the reference tiny CLIP (no reference tensors or authors' code exist): the pre-training loss on the caption
classes of a micro corpus falls, only the prompt trains, and a downstream prompt starts bit for bit from it."""

from __future__ import annotations

import torch

from models.prompting.methods import get_method, parse_method_parameters
from models.prompting.methods.mvlpt import initialise_from_source
from models.prompting.methods.pvp import pretrain
from models.prompting.methods.registry import ClassifierContext
from models.prompting.training import OptimizationConfig
from tests.prompting.test_gram import micro_upstream


def build(model, tokenizer, method, classnames, **parameters):
    context = ClassifierContext(model, tokenizer, list(classnames), ["a photo of a {}."])
    return get_method(method).build(context, parse_method_parameters(method, parameters))


def test_pretraining_loss_falls_on_a_micro_corpus(reference_clip):
    model, tokenizer = reference_clip
    data = micro_upstream(model, images=True)
    classifier = build(model, tokenizer, "pvp_vpt", data.classnames, n_tokens=2)
    history = pretrain(classifier, data, OptimizationConfig(epochs=4, batch_size=24, learning_rate=0.5,
                                                            warmup_epochs=0, weight_decay=0.0))
    assert history.epoch_losses[-1] < history.epoch_losses[0]
    assert all(p.grad is None for p in model.parameters())
    assert set(classifier.trainable_state()) == {"vision_prompts.input_prompt"}


def test_downstream_starts_from_the_pretrained_prompt_bit_for_bit(reference_clip):
    model, tokenizer = reference_clip
    data = micro_upstream(model)
    classifier = build(model, tokenizer, "pvp_coop", data.classnames, n_context=4, context_init=None)
    pretrain(classifier, data, OptimizationConfig(epochs=1, batch_size=8, learning_rate=0.01, warmup_epochs=0))
    state = classifier.trainable_state()
    target = initialise_from_source(build(model, tokenizer, "pvp_coop", ["red", "green"], n_context=4,
                                          context_init=None), state)
    assert torch.equal(target.context, state["context"])
