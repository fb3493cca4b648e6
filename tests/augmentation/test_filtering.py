"""The one cosine rule that filters variations (augmentation stage and DiffTPT)."""

from __future__ import annotations

import pytest
import torch

from models.augmentation.filtering import cosine_to_source, keep_above, keep_top_fraction


def test_cosine_to_source_normalises_both_sides():
    sources = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    variations = torch.tensor([[[3.0, 0.0], [0.0, 5.0], [1.0, 1.0]],
                               [[0.0, 0.5], [-4.0, 0.0], [0.0, -1.0]]])
    similarity = cosine_to_source(sources, variations)
    assert similarity.shape == (2, 3)
    expected = torch.tensor([[1.0, 0.0, 2 ** -0.5], [1.0, 0.0, -1.0]])
    assert torch.allclose(similarity, expected, atol=1e-6)


def test_cosine_to_source_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"expected sources \(B, E\) and variations \(B, V, E\), got \(2, 4\) and "
                                         r"\(3, 5, 4\)"):
        cosine_to_source(torch.ones(2, 4), torch.ones(3, 5, 4))
    with pytest.raises(ValueError, match="expected sources"):
        cosine_to_source(torch.ones(2, 4), torch.ones(2, 4))


def test_keep_above_keeps_what_reaches_the_threshold():
    similarity = torch.tensor([[0.9, 0.8, 0.79], [0.1, 0.8, 1.0]])
    assert keep_above(similarity, 0.8).tolist() == [[True, True, False], [False, True, True]]


def test_keep_top_fraction_picks_the_most_similar_with_ties_by_index():
    similarity = torch.tensor([[0.2, 0.9, 0.5, 0.9, 0.1, 0.3, 0.7, 0.9, 0.0, 0.4]])
    assert keep_top_fraction(similarity, 0.3).tolist() == [[1, 3, 7]]  # three tied at 0.9, lowest index first
    assert keep_top_fraction(similarity, 0.5).tolist() == [[1, 3, 7, 6, 2]]
    assert keep_top_fraction(similarity, 0.01).tolist() == [[1]]  # at least one
    assert keep_top_fraction(similarity, 1.0).shape == (1, 10)


def test_keep_top_fraction_works_per_row_and_repeats_itself():
    similarity = torch.rand(4, 64, generator=torch.Generator().manual_seed(0))
    chosen = keep_top_fraction(similarity, 0.1)
    assert chosen.shape == (4, 6)
    for row, indices in zip(similarity, chosen):
        assert set(indices.tolist()) == set(torch.topk(row, 6).indices.tolist())
    assert torch.equal(keep_top_fraction(similarity, 0.1), chosen)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        keep_top_fraction(similarity, 0.0)
