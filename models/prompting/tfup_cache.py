"""The cache of TFUP and TFUP-T (models/prompting/methods/tfup.py), in the joint feature space: which unlabelled
pool images enter it and how it scores an image. Nothing here learns or touches a tower; it works on cached,
frozen image features and the classes' text features.

- Construction: P = softmax(10 f_hat W_hat^T) over the pool; for each class i the 2K images with the highest
  P[:, i] are candidates, each scored by its summed KL divergence sum_k KL(P_j || P_k) to the other candidates, and
  the K most prototypical (lowest score) enter the cache with pseudolabel i, K = clamp(int(0.3 N / C), 9, 16) for N
  pool images and C classes (`cache_size`, `select_representatives`). An image enters the cache of one class at
  most (deferred acceptance: the result does not depend on class order). The cache is fixed-size, K_max slots per
  class, label -1 for an empty slot (`cache_entries`), so that a freshly built classifier of the same classes loads
  any checkpoint of them.
- Scoring: exp(-beta (1 - R)) onehot(L), R = (f_hat k_hat^T) * sim, with sim in [0, 2] the semantic similarity
  2 (1 - min-max normalised KL(softmax(10 f W^T) || softmax(10 k W^T))) (`cache_logits`, `semantic_similarity`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def cache_size(pool_size: int, n_classes: int, proportion: float, minimum: int, maximum: int | None = None) -> int:
    """Images per class: int(proportion * pool_size / n_classes), at least `minimum`, at most `maximum`."""
    size = max(minimum, int(proportion * pool_size / n_classes))
    return size if maximum is None else min(maximum, size)


@dataclass
class RepresentativeSelection:
    members: list[list[int]]  # per class, the chosen pool indices in prototype order (most prototypical first)
    per_class: int  # the number each class asked for
    contested: int  # images that more than one class tried to take

    def indices_and_labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        indices = [index for members in self.members for index in members]
        labels = [label for label, members in enumerate(self.members) for _ in members]
        return torch.tensor(indices, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def select_representatives(log_probabilities: torch.Tensor, per_class: int) -> RepresentativeSelection:
    """The `per_class` most prototypical pool images of each class, each image in one class at most.

    log_probabilities: (N, C) log softmax(10 f_hat W_hat^T) of the pool. A class's candidates are its 2 per_class
    most probable images; its preference order is their summed KL divergence to the other candidates (lowest first),
    then the rest of the pool by probability. Classes propose in that order and an image keeps the class it is most
    probable for (deferred acceptance), so a class displaced from an image takes its next choice.
    """
    log_probabilities = log_probabilities.detach().double().cpu()
    probabilities = log_probabilities.exp()
    n_images, n_classes = probabilities.shape
    n_candidates = min(2 * per_class, n_images)
    preferences: list[list[int]] = []
    for label in range(n_classes):
        candidates = torch.sort(probabilities[:, label], descending=True, stable=True).indices[:n_candidates]
        candidate_p, candidate_log_p = probabilities[candidates], log_probabilities[candidates]
        # sum_k KL(P_j || P_k) = n sum_c P_jc log P_jc - sum_c P_jc sum_k log P_kc: one product, not n^2 KLs.
        scores = n_candidates * (candidate_p * candidate_log_p).sum(1) - candidate_p @ candidate_log_p.sum(0)
        preferences.append(candidates[torch.sort(scores, stable=True).indices].tolist())
    # Beyond its candidates a class takes the rest of the pool by probability (sorted only when one runs out).
    extended = [n_candidates == n_images] * n_classes

    table = probabilities.numpy()
    owner = [-1] * n_images
    members: list[list[int]] = [[] for _ in range(n_classes)]
    next_choice = [0] * n_classes
    claims = [0] * n_images  # a class proposes to an image once, so this counts the classes that wanted it
    waiting = deque(range(n_classes))
    while waiting:
        label = waiting.popleft()
        while len(members[label]) < per_class:
            if next_choice[label] == len(preferences[label]):
                if extended[label]:
                    break  # no image of the pool is left for this class
                order = torch.sort(probabilities[:, label], descending=True, stable=True).indices
                preferences[label].extend(order[n_candidates:].tolist())
                extended[label] = True
                continue
            image = preferences[label][next_choice[label]]
            next_choice[label] += 1
            claims[image] += 1
            holder = owner[image]
            if holder == -1:
                owner[image] = label
                members[label].append(image)
            elif (table[image, label], -label) > (table[image, holder], -holder):
                owner[image] = label
                members[holder].remove(image)
                members[label].append(image)
                waiting.append(holder)
    for label in range(n_classes):
        rank = {image: position for position, image in enumerate(preferences[label])}
        members[label].sort(key=rank.__getitem__)
    return RepresentativeSelection(members, per_class, contested=sum(count > 1 for count in claims))


def semantic_similarity(query_log_probabilities: torch.Tensor, key_log_probabilities: torch.Tensor,
                        valid_keys: torch.Tensor) -> torch.Tensor:
    """(N, K) similarity in [0, 2]: 2 (1 - min-max normalised KL(p_query || p_key)) over each query's valid keys."""
    query_probabilities = query_log_probabilities.exp()
    divergence = ((query_probabilities * query_log_probabilities).sum(-1, keepdim=True)
                  - query_probabilities @ key_log_probabilities.t())
    # The authors z-score each row first; min-max normalisation cancels that out. Masks, not indexing, so that no
    # shape depends on the data (no host sync on a GPU).
    largest = torch.finfo(divergence.dtype).max
    low = divergence.masked_fill(~valid_keys, largest).amin(-1, keepdim=True)
    high = divergence.masked_fill(~valid_keys, -largest).amax(-1, keepdim=True)
    normalised = ((divergence - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)
    return 2.0 * (1.0 - normalised)


def cache_logits(image: torch.Tensor, text: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
                 sharpness: float, temperature: float) -> torch.Tensor:
    """(N, C) exp(-beta (1 - R)) @ onehot(L), R = (f k^T) * sim; image, text, keys L2-normalised; label -1 = empty."""
    valid = key_labels >= 0
    similarity = semantic_similarity(F.log_softmax(temperature * image @ text.t(), dim=-1),
                                     F.log_softmax(temperature * keys @ text.t(), dim=-1), valid)
    affinity = (image @ keys.t()) * similarity
    weights = torch.exp(-sharpness * (1.0 - affinity)).masked_fill(~valid, 0.0)
    one_hot = (key_labels.unsqueeze(1) == torch.arange(text.shape[0], device=key_labels.device)).to(weights.dtype)
    return weights @ one_hot


def in_chunks(function: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
              chunk_size: int = 1024) -> torch.Tensor:
    """function over the rows of features, a chunk at a time: the semantic similarity is (rows x cache slots)."""
    return torch.cat([function(features[start:start + chunk_size])
                      for start in range(0, features.shape[0], chunk_size)])


def cache_entries(pool_features: torch.Tensor, selection: RepresentativeSelection,
                  slots_per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys (C * slots_per_class, E) float32, labels (C * slots_per_class,) long) of a fixed-size cache: slots
    [i * slots_per_class, (i + 1) * slots_per_class) hold class i's selected pool images, L2-normalised, in
    prototype order; label -1 marks an empty slot."""
    n_slots = len(selection.members) * slots_per_class
    keys = torch.zeros(n_slots, pool_features.shape[1], device=pool_features.device)
    labels = torch.full((n_slots,), -1, dtype=torch.long, device=pool_features.device)
    for label, members in enumerate(selection.members):
        first = label * slots_per_class
        slots = slice(first, first + len(members))
        keys[slots] = F.normalize(pool_features[members], dim=-1).to(keys)
        labels[slots] = label
    return keys, labels
