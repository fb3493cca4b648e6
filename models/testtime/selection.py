"""Which views a test-time step learns from, and the loss it minimises.

- TPT's confidence selection: keep the `fraction` of views with the lowest prediction entropy
  (int(n * fraction), 6 of 64 at the published 0.1; the original competes like any other view).
- DiffTPT's filter, as in the authors' code (the default, `code`): cosine similarity between the *logit* vectors of
  the original and of every other view (conventional and generated alike), keep the int(n_others * 0.8) most
  similar, put the original back in front, then keep the int(kept * 0.3) lowest-entropy views. The paper describes
  another rule (`paper`): the two sources filtered in parallel, the generated views by the cosine of their *image
  features* to the original's (the shared cosine rule of models/augmentation/filtering.py) and then by entropy, the
  conventional ones by entropy alone; the union is kept.
- The loss: the entropy of the views' averaged prediction (log p = logsumexp_i log_softmax(l_i) - log n, clamped at
  the dtype's smallest finite value as the authors do).

Zero kept views: the authors' selection keeps int(n * fraction) views, which is 0 when n * fraction < 1 and then
averages nothing (a NaN loss that poisons the prompt). Here every rule keeps at least one view (the most
confident), and the number kept is recorded with each prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.augmentation.filtering import cosine_to_source, keep_top_fraction

def kept_count(n: int, fraction: float) -> int:
    return max(1, int(n * fraction))


def view_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(V,) entropy of each view's softmax."""
    log_probabilities = logits.float().log_softmax(dim=-1)
    return -(log_probabilities.exp() * log_probabilities).sum(dim=-1)


def lowest_entropy(logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices (ascending entropy, stable) of the kept_count(V, fraction) most confident views."""
    order = torch.argsort(view_entropy(logits), stable=True)
    return order[: kept_count(logits.shape[0], fraction)]


def average_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean prediction over views (TPT's avg_entropy)."""
    log_probabilities = logits.float().log_softmax(dim=-1)
    mean_log = torch.logsumexp(log_probabilities, dim=0) - torch.log(torch.tensor(float(logits.shape[0])))
    mean_log = mean_log.clamp(min=torch.finfo(mean_log.dtype).min)
    return -(mean_log.exp() * mean_log).sum()


@dataclass(frozen=True)
class ViewLayout:
    """Where each source of views sits in one image's batch: [original, conventional..., generated...]."""

    n_conventional: int  # augmented conventional views (excluding the original)
    n_generated: int = 0

    @property
    def total(self) -> int:
        return 1 + self.n_conventional + self.n_generated


def difftpt_code_filter(logits: torch.Tensor, cosine_fraction: float, entropy_fraction: float) -> torch.Tensor:
    """The authors' serial rule: logit cosine to the original over all other views, then entropy."""
    others = logits[1:].float()
    if others.shape[0] == 0:
        return torch.zeros(1, dtype=torch.long)
    similarity = cosine_to_source(logits[:1].float(), others.unsqueeze(0))  # (1, V-1)
    similar = keep_top_fraction(similarity, cosine_fraction)[0] + 1
    candidates = torch.cat([torch.zeros(1, dtype=torch.long), similar.to(torch.long)])
    return candidates[lowest_entropy(logits[candidates], entropy_fraction)]


def difftpt_paper_filter(logits: torch.Tensor, image_features: torch.Tensor, layout: ViewLayout,
                         cosine_fraction: float, entropy_fraction: float) -> torch.Tensor:
    """The paper's parallel rule: generated views by image-feature cosine to the original then entropy; the original
    and the conventional views by entropy; the union."""
    conventional = torch.arange(0, 1 + layout.n_conventional)
    kept = [conventional[lowest_entropy(logits[conventional], entropy_fraction)]]
    if layout.n_generated:
        generated = torch.arange(1 + layout.n_conventional, layout.total)
        similarity = cosine_to_source(image_features[:1].float(), image_features[generated].float().unsqueeze(0))
        similar = generated[keep_top_fraction(similarity, cosine_fraction)[0].to(torch.long)]
        kept.append(similar[lowest_entropy(logits[similar], entropy_fraction)])
    return torch.cat(kept)


