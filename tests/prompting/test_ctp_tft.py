"""CTP/TFT: per-class image-conditioned prompt shifts, text-guided image features, a text-to-image contrastive term."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.experiments import build_classifier
from models.prompting.methods import parse_method_parameters
from models.prompting.methods.ctp_tft import text_to_image_alignment
from models.prompting.training import OptimizationConfig, train_prompt_parameters

CLASSNAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}."]


def build(reference_clip, method, parameters):
    model, tokenizer = reference_clip
    return build_classifier(model, tokenizer, method, parameters, CLASSNAMES, TEMPLATES)


def test_zero_outputs_are_coop_and_shifts_differ_by_class(reference_clip, toy_features):
    features, _ = toy_features
    batch = features[::6]  # 4 images
    coop = build(reference_clip, "coop", {"context_init": "a photo of a"})
    ctp = build(reference_clip, "ctp_tft", {"attention_reduction": 4})
    assert torch.equal(ctp.context, coop.context)
    with torch.no_grad():
        image = F.normalize(batch, dim=-1)
        assert torch.equal(ctp.class_shifts(image), torch.zeros_like(ctp.class_shifts(image)))
        assert (ctp(batch) - coop(batch)).abs().max() <= 1e-4 * coop(batch).abs().max()
        ctp.prompt_shift.weight.normal_(std=0.05)
        shifts = ctp.class_shifts(image)  # (B, C, D)
        assert (shifts[:, 0] - shifts[:, 1]).abs().max() > 1e-4  # each class its own shift (CoCoOp: one for all)
        assert (shifts[:, 1] - shifts[:, 2]).abs().max() > 1e-4
        assert (shifts[0] - shifts[1]).abs().max() > 1e-4  # and it depends on the image
        shifted = ctp(batch)
        assert (shifted - coop(batch)).abs().max() > 1e-4
        # the per-(image, class) prompts, chunked one prompt per pass, give the same features
        chunked = build(reference_clip, "ctp_tft", {"attention_reduction": 4, "text_chunk_size": 1})
        chunked.load_state_dict(ctp.state_dict())
        assert torch.allclose(chunked(batch), shifted, atol=1e-4)


def test_tuned_feature_reads_the_class_texts(reference_clip):
    ctp = build(reference_clip, "ctp_tft", {"attention_reduction": 4})
    hidden, dim = ctp.hidden, ctp.class_text_features.shape[1]
    image = F.normalize(torch.randn(2, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    text = F.normalize(torch.randn(2, 3, dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    with torch.no_grad():
        assert torch.equal(ctp.tuned_image_features(image, text), image)  # O' = 0: the image feature unchanged
        ctp.feature_shift.weight.normal_()
        weights = (ctp.feature_query(image)[:, None] * ctp.text_key(text)).sum(-1).div(math.sqrt(hidden)).softmax(-1)
        read = (weights[..., None] * ctp.text_value(text)).sum(1)
        expected = image + read @ ctp.feature_shift.weight.t() + ctp.feature_shift.bias
        assert torch.allclose(ctp.tuned_image_features(image, text), expected, atol=1e-5)


def test_text_to_image_alignment_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    images = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    scale = torch.tensor(10.0)
    root = 2 ** -0.5
    cos = torch.tensor([[1.0, 0.0, root], [0.0, 1.0, root], [1.0, 0.0, root]])
    log_p = (scale * cos).log_softmax(dim=1)
    # images 0 and 2 share label 0: positives of texts 0 and 2 with weight 1/2 each; image 1 alone for text 1
    expected = (-(0.5 * log_p[0, 0] + 0.5 * log_p[0, 2]) - log_p[1, 1] - (0.5 * log_p[2, 0] + 0.5 * log_p[2, 2])) / 3
    assert torch.allclose(text_to_image_alignment(text, images, labels, scale), expected, atol=1e-6)


def test_gradients_reach_the_method_only_and_it_trains(reference_clip, toy_features):
    model, _ = reference_clip
    features, labels = toy_features
    ctp = build(reference_clip, "ctp_tft", {"attention_reduction": 4})
    loss, logits = ctp.training_loss(features[::6], labels[::6])
    plain = ctp.loss(logits, labels[::6])
    assert loss > plain  # the contrastive term is there
    loss.backward()
    assert ctp.context.grad.abs().sum() > 0
    assert ctp.prompt_shift.weight.grad.abs().sum() > 0 and ctp.feature_shift.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert "class_text_features" not in ctp.trainable_state()
    history = train_prompt_parameters(ctp, features[::2], labels[::2],
                                      OptimizationConfig(epochs=1, batch_size=4, learning_rate=0.01))
    assert len(history.epoch_losses) == 1 and math.isfinite(history.epoch_losses[0])


@pytest.mark.parametrize("field, value", [("image_tokens", 0), ("attention_reduction", 0),
                                          ("alignment_weight", -1.0)])
def test_bad_parameters_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        parse_method_parameters("ctp_tft", {field: value})
