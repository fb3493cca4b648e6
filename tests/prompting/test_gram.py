"""GRAM on the reference tiny CLIP (no reference tensors or authors' code exist): the regulated inner step is
theta - a*psi(g) on a hand case, meta-training moves psi off the identity and leaves the backbone frozen, the
downstream prompt starts bit for bit at the stored meta-learned state and its gradient goes through psi, domains
are mined from the joint features, and fewer than 2 domains are refused."""

from __future__ import annotations

import pytest
import torch

from models.prompting.methods import get_method, parse_method_parameters
from models.prompting.methods.coop import CoOpClassifier
from models.prompting.methods.gram import (REGULATOR_PREFIX, GradientRegulator, GRAMMetaSchedule, meta_train,
                                           regulated_step)
from models.prompting.methods.registry import ClassifierContext
from models.prompting.training import OptimizationConfig, train_prompt_parameters
from models.prompting.upstream import UpstreamData, caption_labels, cross_modal_domains

CAPTIONS = ["a circle", "a square", "a star"]
COOP = {"n_context": 4, "context_init": None}


def build(model, tokenizer, method, classnames, **parameters):
    context = ClassifierContext(model, tokenizer, list(classnames), ["a photo of a {}."])
    return get_method(method).build(context, parse_method_parameters(method, parameters))


def micro_upstream(model, images: bool = False) -> UpstreamData:
    """3 caption classes (constant colours) in 2 domains (dark and bright), 4 pairs per class and domain."""
    generator = torch.Generator().manual_seed(0)
    pixels, captions, domains = [], [], []
    for domain, offset in enumerate((-0.5, 0.5)):
        for label, caption in enumerate(CAPTIONS):
            colour = torch.full((3,), -1.0)
            colour[label] = 1.0
            for _ in range(4):
                pixels.append(colour.view(3, 1, 1) + offset + 0.3 * torch.randn(3, 32, 32, generator=generator))
                captions.append(caption)
                domains.append(domain)
    pixels = torch.stack(pixels)
    labels, names = caption_labels(captions)
    with torch.no_grad():
        inputs = pixels if images else model.encode_image(pixels)
    return UpstreamData(inputs, labels, names, torch.tensor(domains))


SCHEDULE = GRAMMetaSchedule(n_domains=2, n_way=3, support_shots=2, query_shots=2, outer_steps=3, tasks_per_step=2,
                            inner_learning_rate=0.5, outer_learning_rate=0.01)


def test_inner_step_is_theta_minus_a_psi_of_the_gradient():
    theta = {"context": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    regulator = GradientRegulator(theta)
    with torch.no_grad():
        regulator.scale["context"].copy_(torch.tensor([[0.5, 1.0], [2.0, 0.0]]))
        regulator.shift["context"].copy_(torch.tensor([[0.1, 0.0], [0.0, -0.1]]))
    gradient = {"context": torch.tensor([[1.0, -1.0], [0.5, 3.0]])}
    stepped = regulated_step(theta, gradient, regulator, learning_rate=0.1)["context"]
    # by hand: psi(g) = [[0.5*1+0.1, 1*-1+0], [2*0.5+0, 0*3-0.1]] = [[0.6, -1], [1, -0.1]]
    expected = torch.tensor([[1.0 - 0.06, 2.0 + 0.1], [3.0 - 0.1, 4.0 + 0.01]])
    assert torch.allclose(stepped, expected)
    plain = regulated_step(theta, gradient, GradientRegulator(theta), learning_rate=0.1)["context"]
    assert torch.allclose(plain, theta["context"] - 0.1 * gradient["context"])  # identity psi: plain SGD step
    assert not torch.allclose(stepped, plain)


def test_meta_training_moves_psi_and_the_prompt_and_leaves_the_backbone_frozen(reference_clip):
    model, tokenizer = reference_clip
    data = micro_upstream(model)
    classifier = build(model, tokenizer, "gram_coop", data.classnames, **COOP)
    start = classifier.context.detach().clone()
    result = meta_train(classifier, data, SCHEDULE, seed=1)
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(result.state["context"], start)
    scale, shift = result.state[REGULATOR_PREFIX + "scale.context"], result.state[REGULATOR_PREFIX + "shift.context"]
    assert not torch.equal(scale, torch.ones_like(scale)) and not torch.equal(shift, torch.zeros_like(shift))
    assert len(result.query_losses) == SCHEDULE.outer_steps and all(torch.isfinite(torch.tensor(result.query_losses)))
    # after meta-training the regulated inner step differs from the plain one
    regulator = GradientRegulator({"context": start})
    regulator.load_state_dict({"scale.context": scale, "shift.context": shift})
    gradient = {"context": torch.randn_like(start)}
    assert not torch.allclose(regulated_step({"context": start}, gradient, regulator, 0.5)["context"],
                              start - 0.5 * gradient["context"])


def test_downstream_starts_at_the_meta_learned_state_and_regulates_its_gradient(reference_clip, toy_features):
    model, tokenizer = reference_clip
    data = micro_upstream(model)
    result = meta_train(build(model, tokenizer, "gram_coop", data.classnames, **COOP), data, SCHEDULE, seed=1)
    downstream = build(model, tokenizer, "gram_coop", ["red", "green", "blue"], **COOP).initialise_from_state(
        result.state)
    assert torch.equal(downstream.context, result.state["context"])  # bit for bit, before any step
    assert set(downstream.trainable_state()) == {"context"}  # psi is frozen and never in the checkpoint
    features, labels = toy_features
    plain = CoOpClassifier(ClassifierContext(model, tokenizer, ["red", "green", "blue"], ["{}"]),
                           parse_method_parameters("coop", COOP))
    with torch.no_grad():
        plain.context.copy_(result.state["context"])
    plain.backward_step(features, labels)
    downstream.backward_step(features, labels)
    scale, shift = result.state[REGULATOR_PREFIX + "scale.context"], result.state[REGULATOR_PREFIX + "shift.context"]
    assert torch.allclose(downstream.context.grad, scale * plain.context.grad + shift, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())
    history = train_prompt_parameters(downstream, features, labels,
                                      OptimizationConfig(epochs=1, batch_size=8, learning_rate=0.01, warmup_epochs=0))
    assert history.steps == 3 and not torch.equal(downstream.context, result.state["context"])


def test_a_state_of_another_prompt_is_refused(reference_clip):
    model, tokenizer = reference_clip
    data = micro_upstream(model)
    result = meta_train(build(model, tokenizer, "gram_coop", data.classnames, **COOP), data,
                        GRAMMetaSchedule(n_domains=2, n_way=2, outer_steps=1, tasks_per_step=1), seed=1)
    other = build(model, tokenizer, "gram_coop", ["red", "green"], n_context=2, context_init=None)
    with pytest.raises(ValueError, match="shapes differ"):
        other.initialise_from_state(result.state)


def test_gram_vpt_meta_trains_through_the_image_tower(reference_clip):
    model, tokenizer = reference_clip
    data = micro_upstream(model, images=True)
    classifier = build(model, tokenizer, "gram_vpt", data.classnames, n_tokens=2)
    start = classifier.vision_prompts.input_prompt.detach().clone()
    result = meta_train(classifier, data, GRAMMetaSchedule(n_domains=2, n_way=2, support_shots=1, query_shots=1,
                                                           outer_steps=1, tasks_per_step=1,
                                                           outer_learning_rate=0.01), seed=1)
    assert not torch.equal(result.state["vision_prompts.input_prompt"], start)
    assert all(p.grad is None for p in model.parameters())


def test_domains_are_mined_from_the_joint_features_and_fewer_than_two_are_refused():
    generator = torch.Generator().manual_seed(0)
    image = torch.cat([torch.randn(6, 8, generator=generator) * 0.05 + 1, torch.randn(6, 8, generator=generator) * 0.05 - 1])
    text = torch.randn(12, 4, generator=generator) * 0.05 + 1
    domains = cross_modal_domains(image, text, 2, seed=0)
    assert len(set(domains[:6].tolist())) == 1 and len(set(domains[6:].tolist())) == 1 and domains[0] != domains[6]
    with pytest.raises(ValueError, match="at least 2 domains"):
        cross_modal_domains(image, text, 1, seed=0)
    with pytest.raises(ValueError, match="n_domains"):
        GRAMMetaSchedule(n_domains=1)


def test_second_order_differentiates_through_the_inner_step_and_first_order_does_not(reference_clip):
    """The same task and start: the second-order outer gradient (through grad L_S) moves the prompt elsewhere than
    first-order MAML's, and both train psi."""
    model, tokenizer = reference_clip
    data = micro_upstream(model)
    states = {}
    for second_order in (True, False):
        classifier = build(model, tokenizer, "gram_coop", data.classnames, **COOP)
        schedule = GRAMMetaSchedule(n_domains=2, n_way=3, support_shots=2, query_shots=2, outer_steps=1,
                                    tasks_per_step=1, inner_learning_rate=0.5, outer_learning_rate=0.01,
                                    second_order=second_order)
        states[second_order] = meta_train(classifier, data, schedule, seed=1).state
    assert not torch.allclose(states[True]["context"], states[False]["context"], atol=0, rtol=0)
    for state in states.values():
        scale = state[REGULATOR_PREFIX + "scale.context"]
        assert not torch.equal(scale, torch.ones_like(scale))


def test_upstream_data_in_one_domain_draws_no_task(reference_clip):
    model, _ = reference_clip
    data = micro_upstream(model)
    from models.prompting.methods.gram import TaskSampler

    single = UpstreamData(data.inputs, data.labels, data.classnames, torch.zeros_like(data.domains))
    with pytest.raises(ValueError, match="non-empty domains; GRAM needs at least 2"):
        TaskSampler(single, SCHEDULE, seed=0)
