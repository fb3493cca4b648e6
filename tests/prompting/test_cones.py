"""ConES: concept embeddings in the text output space, from zero-shot's; no text-tower pass while training."""

import torch

from models.experiments import build_classifier
from models.prompting.training import OptimizationConfig, train_prompt_parameters

CLASSNAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def build(reference_clip, method):
    model, tokenizer = reference_clip
    return build_classifier(model, tokenizer, method, {}, CLASSNAMES, TEMPLATES)


def test_logits_at_initialisation_equal_zero_shot(reference_clip, toy_features):
    features, _ = toy_features
    cones, zero_shot = build(reference_clip, "cones"), build(reference_clip, "zero_shot")
    with torch.no_grad():
        assert torch.equal(cones(features), zero_shot(features))


def test_training_never_calls_the_text_tower(reference_clip, toy_features):
    model, _ = reference_clip
    features, labels = toy_features
    cones = build(reference_clip, "cones")
    calls = []
    hooks = [cones.text_tower.register_forward_hook(lambda *args: calls.append("tower")),
             cones.text_tower.transformer.register_forward_hook(lambda *args: calls.append("transformer"))]
    try:
        loss, _ = cones.training_loss(features, labels)
        loss.backward()
        assert [name for name, p in cones.named_parameters() if p.requires_grad] == ["concepts"]
        assert cones.concepts.grad is not None and cones.concepts.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.parameters())  # the backbone gets no gradient
        cones.concepts.grad = None
        history = train_prompt_parameters(cones, features, labels, OptimizationConfig(
            epochs=2, batch_size=8, learning_rate=1e-3, optimizer="adam", weight_decay=0.0))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []
    assert len(history.epoch_losses) == 2
    assert not torch.equal(cones.concepts.detach(), cones.initial_concepts)
    assert set(cones.trainable_state()) == {"concepts"}


def test_a_step_on_a_hand_computed_cross_entropy(reference_clip):
    """The loss is the cross-entropy of exp(logit_scale) cos(f, w_c), computed by hand on 2 images, 3 classes."""
    cones = build(reference_clip, "cones")
    width = cones.concepts.shape[1]
    with torch.no_grad():
        cones.concepts.zero_()
        cones.concepts[0, 0], cones.concepts[1, 1], cones.concepts[2, 0], cones.concepts[2, 1] = 2.0, 1.0, 1.0, 1.0
    images = torch.zeros(2, width)
    images[0, 0], images[1, 1], images[1, 0] = 3.0, 1.0, -1.0
    labels = torch.tensor([0, 2])
    scale = float(cones.logit_scale)
    root = 2 ** -0.5
    cosines = torch.tensor([[1.0, 0.0, root], [-root, root, 0.0]])
    expected = torch.nn.functional.cross_entropy(scale * cosines, labels)
    loss, logits = cones.training_loss(images, labels)
    assert torch.allclose(logits, scale * cosines, atol=1e-5)
    assert torch.allclose(loss, expected, atol=1e-6)
