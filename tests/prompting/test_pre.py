"""PRE: CoOp with a residual prompt encoder; with a zero output layer it is CoOp exactly (reference tiny CLIP)."""

import pytest
import torch

from models.experiments import build_classifier, load_prompt_checkpoint, save_prompt_checkpoint
from models.prompting.methods import get_method, parse_method_parameters
from models.prompting.training import OptimizationConfig, predict_probabilities, train_prompt_parameters

CLASSNAMES = ["red", "green", "blue"]
OTHER_CLASSNAMES = ["yellow", "purple", "orange", "black"]
TEMPLATES = ["a photo of a {}."]
ENCODERS = ("lstm", "mlp")
CONTEXTS = ({"context_init": "a photo of a"}, {"context_init": None, "n_context": 6, "init_seed": 3})


def build(reference_clip, method, parameters, classnames=CLASSNAMES):
    model, tokenizer = reference_clip
    return build_classifier(model, tokenizer, method, parameters, classnames, TEMPLATES)


@pytest.mark.parametrize("encoder_type", ENCODERS)
@pytest.mark.parametrize("context", CONTEXTS)
def test_zero_output_layer_gives_coop_with_the_same_context(reference_clip, toy_features, encoder_type, context):
    features, _ = toy_features
    coop = build(reference_clip, "coop", context)
    pre = build(reference_clip, "pre", {**context, "encoder_type": encoder_type, "zero_init_output": True})
    assert torch.equal(pre.context, coop.context)  # the encoder's input starts as CoOp's context
    with torch.no_grad():
        assert (pre(features) - coop(features)).abs().max() <= 1e-6
        # the default (published) random encoder does change the prompts
        random_encoder = build(reference_clip, "pre", {**context, "encoder_type": encoder_type})
        assert (random_encoder(features) - coop(features)).abs().max() > 1e-4


@pytest.mark.parametrize("encoder_type", ENCODERS)
def test_gradients_reach_the_input_context_and_encoder_only(reference_clip, toy_features, encoder_type):
    model, _ = reference_clip
    features, labels = toy_features
    pre = build(reference_clip, "pre", {"encoder_type": encoder_type})
    trainable = {name for name, p in pre.named_parameters() if p.requires_grad}
    assert "context" in trainable and all(n == "context" or n.startswith("encoder.") for n in trainable)
    assert set(pre.trainable_state()) == trainable
    loss, _ = pre.training_loss(features, labels)
    loss.backward()
    for name, parameter in pre.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters())


def test_training_lowers_the_loss_and_moves_context_and_encoder(reference_clip, toy_features):
    model, _ = reference_clip
    features, labels = toy_features
    frozen_before = model.token_embedding.weight.clone()
    pre = build(reference_clip, "pre", {})
    before = {name: tensor.clone() for name, tensor in pre.trainable_state().items()}
    history = train_prompt_parameters(pre, features, labels,
                                      OptimizationConfig(epochs=30, batch_size=8, learning_rate=0.05, seed=1))
    assert history.epoch_losses[-1] < 0.75 * history.epoch_losses[0]
    after = pre.trainable_state()
    assert not torch.equal(after["context"], before["context"])
    assert not torch.equal(after["encoder.output.weight"], before["encoder.output.weight"])
    assert torch.equal(model.token_embedding.weight, frozen_before)


def test_same_init_seed_gives_the_same_encoder(reference_clip):
    first = build(reference_clip, "pre", {"init_seed": 5}).trainable_state()
    second = build(reference_clip, "pre", {"init_seed": 5}).trainable_state()
    other = build(reference_clip, "pre", {"init_seed": 6}).trainable_state()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["encoder.output.weight"], other["encoder.output.weight"])


def test_checkpoint_round_trip_and_transfer_to_other_classes(tmp_path, reference_clip, toy_features):
    model, tokenizer = reference_clip
    features, labels = toy_features
    parameters = {"encoder_type": "lstm", "hidden_size": 8}
    pre = build(reference_clip, "pre", parameters)
    train_prompt_parameters(pre, features, labels, OptimizationConfig(epochs=2, batch_size=8, learning_rate=0.05))
    config = {"method": "pre", "parameters": parameters, "classnames": CLASSNAMES, "templates": TEMPLATES}
    directory = save_prompt_checkpoint(tmp_path / "checkpoint", pre, config)
    reloaded, _ = load_prompt_checkpoint(directory, model, tokenizer)
    assert torch.equal(predict_probabilities(reloaded, features), predict_probabilities(pre, features))

    # the unified context and the encoder apply to class names never trained on
    assert get_method("pre").transfers_to_other_classes(parameters)
    transferred, _ = load_prompt_checkpoint(directory, model, tokenizer, classnames=OTHER_CLASSNAMES)
    with torch.no_grad():
        assert torch.equal(transferred.context_vectors(), pre.context_vectors())
        probabilities = predict_probabilities(transferred, features)
        untrained = predict_probabilities(build(reference_clip, "pre", parameters, OTHER_CLASSNAMES), features)
    assert probabilities.shape == (len(features), len(OTHER_CLASSNAMES))
    assert not torch.allclose(probabilities, untrained)  # the learned state, not a fresh one, was applied


def test_bad_parameters_are_rejected_by_name():
    with pytest.raises(ValueError, match="encoder_type"):
        parse_method_parameters("pre", {"encoder_type": "gru"})
    with pytest.raises(ValueError, match="class_specific_context"):
        parse_method_parameters("pre", {"class_specific_context": True})
    with pytest.raises(ValueError, match="hidden_size"):
        parse_method_parameters("pre", {"hidden_size": 0})
