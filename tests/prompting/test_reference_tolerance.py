"""The gradient bound of the reference tests tells rounding from a different computation."""

import pytest
import torch

from tests.prompting.reference_tolerance import assert_gradient_matches


@pytest.fixture
def gradient():
    return torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 5


def test_fp32_rounding_of_a_few_ulps_passes_and_a_relative_change_of_1e_4_fails(gradient):
    assert_gradient_matches(gradient + 8 * torch.finfo(torch.float32).eps * gradient.abs(), gradient)
    with pytest.raises(AssertionError, match="entries off by more than the bound"):
        assert_gradient_matches(gradient * (1 + 1e-4), gradient)


def test_one_fp16_ulp_passes_only_where_the_original_rounds_to_fp16(gradient):
    largest = divmod(int(gradient.abs().argmax()), gradient.shape[1])
    entry = gradient[largest].item()
    one_ulp = 2.0 ** torch.floor(torch.log2(torch.tensor(abs(entry)))).item() * torch.finfo(torch.float16).eps
    flipped = gradient.clone()
    flipped[largest] += one_ulp
    assert_gradient_matches(flipped, gradient, fp16_rounded=True)
    with pytest.raises(AssertionError):
        assert_gradient_matches(flipped, gradient)
    flipped[largest] += one_ulp
    with pytest.raises(AssertionError):
        assert_gradient_matches(flipped, gradient, fp16_rounded=True)
