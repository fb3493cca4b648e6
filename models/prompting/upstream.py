"""Prompt training on upstream image-caption data (the embedded corpus), before any downstream task: the data both
upstream initialisations (GRAM's meta-learned prompt, methods/gram.py; PVP's pre-trained prompt, methods/pvp.py) read.

- `UpstreamData`: the corpus pairs as one classification problem: each pair's inputs (cached image features, or
  preprocessed images for prompt types that prompt the image tower), its caption-derived label (an index into
  `classnames`, the distinct subject captions: "a striped circle", "the digit three") and its domain;
- `cross_modal_domains`: domains mined from the pairs by k-means on the frozen towers' joint image + caption features
  (GRAM's cross-modal clustering of CC3M, flat instead of hierarchical);
- `prompt_logits`: a classifier's logits with its prompt replaced by other tensors (torch.func.functional_call), so
  that an inner step's prompt theta' = theta - a * psi(g), a non-leaf tensor, scores a query as the prompt would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class UpstreamData:
    inputs: torch.Tensor  # (N, E) image features or (N, 3, H, W) preprocessed images
    labels: torch.Tensor  # (N,) int64 into classnames
    classnames: tuple[str, ...]
    domains: torch.Tensor  # (N,) int64 in [0, n_domains)

    def __post_init__(self) -> None:
        n = len(self.inputs)
        if len(self.labels) != n or len(self.domains) != n:
            raise ValueError(f"upstream data: {n} inputs, {len(self.labels)} labels, {len(self.domains)} domains")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classnames)):
            raise ValueError(f"upstream data: labels outside its {len(self.classnames)} class names")

    @property
    def n_domains(self) -> int:
        return int(self.domains.max()) + 1 if len(self.domains) else 0


def caption_labels(captions: list[str]) -> tuple[torch.Tensor, tuple[str, ...]]:
    """(labels, class names): each distinct caption one class, in order of first appearance."""
    names: dict[str, int] = {}
    labels = [names.setdefault(caption, len(names)) for caption in captions]
    return torch.tensor(labels, dtype=torch.int64), tuple(names)


def cross_modal_domains(image_features: torch.Tensor, text_features: torch.Tensor, n_domains: int, seed: int,
                        iterations: int = 50) -> torch.Tensor:
    """(N,) domain of each pair: k-means (k-means++ seeding from `seed`, Lloyd iterations) on the concatenated
    L2-normalised image and caption features. Fewer than 2 domains, or fewer pairs than domains, is refused; an
    empty cluster is re-seeded on the pair farthest from its centre, so every domain holds pairs."""
    if n_domains < 2:
        raise ValueError(f"GRAM's tasks are mined from at least 2 domains, got n_domains={n_domains}")
    points = torch.cat([F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)], 1)
    if len(points) < n_domains:
        raise ValueError(f"{len(points)} pairs cannot form {n_domains} domains")
    generator = torch.Generator().manual_seed(seed)
    centres = points[torch.randint(len(points), (1,), generator=generator)]
    while len(centres) < n_domains:  # k-means++: the next centre drawn with probability ~ squared distance
        distance = torch.cdist(points, centres).min(dim=1).values.pow(2)
        weights = distance if float(distance.sum()) > 0 else torch.ones_like(distance)
        centres = torch.cat([centres, points[torch.multinomial(weights, 1, generator=generator)]])
    for _ in range(iterations):
        assignment = torch.cdist(points, centres).argmin(dim=1)
        for domain in range(n_domains):
            members = points[assignment == domain]
            if len(members):
                centres[domain] = members.mean(dim=0)
            else:
                farthest = torch.cdist(points, centres).min(dim=1).values.argmax()
                centres[domain] = points[farthest]
                assignment[farthest] = domain
    return torch.cdist(points, centres).argmin(dim=1)


def prompt_logits(classifier: torch.nn.Module, prompt: Mapping[str, torch.Tensor], inputs: torch.Tensor,
                  classes: torch.Tensor | None = None) -> torch.Tensor:
    """The classifier's logits on `inputs` with its trainable tensors replaced by `prompt` (name -> tensor), over
    the columns `classes` only (an N-way task among the classifier's class names); every other tensor is its own."""
    logits = torch.func.functional_call(classifier, dict(prompt), (inputs,), strict=False)
    return logits if classes is None else logits[:, classes]
