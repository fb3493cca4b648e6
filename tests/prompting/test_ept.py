"""EPT (ported from NLP): a short prompt plus K gated low-rank updates of the frozen token embeddings."""

import pytest
import torch

from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import CatalogError, load_catalog
from models.experiments import build_classifier
from models.prompting.methods import parse_method_parameters
from models.prompting.training import OptimizationConfig, train_prompt_parameters

CLASSNAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}."]


def build(reference_clip, method, parameters):
    model, tokenizer = reference_clip
    return build_classifier(model, tokenizer, method, parameters, CLASSNAMES, TEMPLATES)


@pytest.mark.parametrize("context", [{"n_context": 8, "init_seed": 2}, {"context_init": "a photo of a"}])
def test_zero_low_rank_is_the_plain_short_prompt(reference_clip, toy_features, context):
    features, _ = toy_features
    coop = build(reference_clip, "coop", context)
    ept = build(reference_clip, "ept", context)
    assert torch.equal(ept.context, coop.context)
    with torch.no_grad():
        assert torch.equal(ept.embedding_update(), torch.zeros_like(ept.embedding_update()))
        assert (ept(features) - coop(features)).abs().max() <= 1e-6
        ept.low_rank_features.normal_()  # a non-zero update does change the prompts
        assert (ept(features) - coop(features)).abs().max() > 1e-3


def test_the_gate_mixes_the_projections_by_hand(reference_clip):
    ept = build(reference_clip, "ept", {"n_projections": 2, "rank": 1})
    width = ept.class_name_embeddings.shape[1]
    with torch.no_grad():
        ept.low_rank_positions.zero_()
        ept.low_rank_features.zero_()
        ept.low_rank_positions[0, 1, 0], ept.low_rank_positions[1, 1, 0] = 1.0, 2.0  # A_1, A_2: position 1 only
        ept.low_rank_features[0, 0, 0], ept.low_rank_features[1, 0, 1] = 3.0, 5.0  # B_1 = 3 e_0, B_2 = 5 e_1
        ept.gate.weight.zero_()
        ept.gate.bias.copy_(torch.tensor([0.0, 1.0]))
        ept.gate.weight[1, 0] = 1.0
    x = ept.class_name_embeddings[:, 0]
    g2 = torch.exp(1.0 + x) / (1.0 + torch.exp(1.0 + x))  # softmax([0, 1 + x])[1]
    update = ept.embedding_update()
    expected = torch.zeros_like(update)
    expected[:, 1, 0] = (1 - g2) * 1.0 * 3.0
    expected[:, 1, 1] = g2 * 2.0 * 5.0
    assert torch.allclose(update, expected, atol=1e-6)
    assert update.shape[-1] == width
    # the classes' gates differ: each reads its own name
    assert not torch.allclose(ept.gate_weights()[0], ept.gate_weights()[1])


def test_only_the_prompt_the_low_rank_pairs_and_the_gate_get_gradients(reference_clip, toy_features):
    model, _ = reference_clip
    features, labels = toy_features
    ept = build(reference_clip, "ept", {})
    trainable = {name for name, p in ept.named_parameters() if p.requires_grad}
    assert trainable == {"context", "low_rank_positions", "low_rank_features", "gate.weight", "gate.bias"}
    loss, _ = ept.training_loss(features, labels)
    loss.backward()
    assert ept.context.grad.abs().sum() > 0 and ept.low_rank_features.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    history = train_prompt_parameters(ept, features, labels, OptimizationConfig(epochs=2, batch_size=8,
                                                                                learning_rate=0.01))
    assert len(history.epoch_losses) == 2
    assert ept.low_rank_features.detach().abs().sum() > 0  # the update has left zero


@pytest.mark.parametrize("field", ["rank", "n_projections"])
def test_zero_rank_or_projections_is_refused_when_the_catalog_loads(catalog_copy, field):
    with pytest.raises(ValueError, match=field):
        parse_method_parameters("ept", {field: 0})
    edit(catalog_copy / "methods.yaml", lambda c: c["methods"]["ept"]["parameters"].update({field: 0}))
    with pytest.raises(CatalogError, match=rf"methods.yaml: methods.ept: ept: {field} must be an integer >= 1"):
        load_catalog(catalog_copy)
