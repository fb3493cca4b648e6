"""Image features from a frozen image tower, computed in canonical batches, once per image and view.

Why canonical batches. A matrix product rounds a row differently depending on the batch around it: measured on CPU,
an image's ViT-B-32 features encoded alone and in a batch of 16 differ by up to 2.6e-6, and a plain projection gives
different bits to even and odd rows of one batch. So features computed in whatever batches a caller happened to form
would depend on which images were encoded together, and two workspaces that cached different image sets would train
on features that differ in the last bits (enough to flip a linear probe's selected C). Encoding one image per pass is
exact but several times slower than a batch.

The rule here: the features of an image are computed within an `ImageSet` (a dataset's images, an augmentation set),
whose images are ordered by (split, content hash) and cut into batches of `CANONICAL_BATCH_SIZE` within each split. An image's batch, its
position in it and its neighbours are then fixed by the set, whoever asks first and for whichever subset: a request
encodes the whole canonical batches holding the images it misses, so every caller reads the same bits at batched
speed. The set's key and the batch size are part of the feature cache's key (FeatureNamespace.batching).

Decoding and preprocessing run in a DataLoader (worker processes for larger requests), overlapping the encoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from PIL import Image

from models.precision import precision_for
from models.provenance import stable_hash

CANONICAL_BATCH_SIZE = 64
# Environment override of the DataLoader's worker processes (0: decode in the encoding process).
LOADER_WORKERS_VARIABLE = "PROMPTLAB_LOADER_WORKERS"


@torch.no_grad()
def encode_images(
    clip_model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Image.Image],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Raw (unnormalized) image features (N, E) in input order, in batches of up to `batch_size` (their last bits
    depend on the batches: the feature cache goes through `ImageSet` batches instead)."""
    clip_model.eval()
    device = torch.device(device)
    precision = precision_for(device, training=False)
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([preprocess(image) for image in images[start : start + batch_size]]).to(device)
        with precision.autocast():
            chunks.append(clip_model.encode_image(pixels).float().cpu())
    if not chunks:
        raise ValueError("no images to encode")
    return torch.cat(chunks)


@dataclass(frozen=True)
class ImageSet:
    """The images features are computed among: unique content hashes, each with one file (relative to
    `image_dir`) and a group (a dataset's split), ordered by (group, content hash) and cut into canonical batches of
    `batch_size` within each group, so that encoding a test split never encodes training images."""

    image_dir: Path
    content_hashes: tuple[str, ...]
    relative_paths: tuple[str, ...]
    groups: tuple[str, ...]
    batch_size: int = CANONICAL_BATCH_SIZE

    @classmethod
    def of(cls, image_dir: Path | str, relative_paths: Iterable[str], content_hashes: Iterable[str],
           groups: Iterable[str] | None = None, batch_size: int = CANONICAL_BATCH_SIZE) -> "ImageSet":
        """The set of these files (an image found twice by content keeps its first path and group), in canonical
        order; without groups all images are one group."""
        paths, hashes = list(relative_paths), list(content_hashes)
        groups = [""] * len(paths) if groups is None else [str(group) for group in groups]
        if not len(paths) == len(hashes) == len(groups):
            raise ValueError(f"{len(paths)} images but {len(hashes)} content hashes and {len(groups)} groups")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        first: dict[str, tuple[str, str]] = {}
        for path, content_hash, group in zip(paths, hashes, groups):
            first.setdefault(content_hash, (group, path))
        if not first:
            raise ValueError(f"an image set needs at least one image ({image_dir})")
        ordered = sorted(first, key=lambda content_hash: (first[content_hash][0], content_hash))
        return cls(Path(image_dir), tuple(ordered), tuple(first[h][1] for h in ordered),
                   tuple(first[h][0] for h in ordered), batch_size)

    @classmethod
    def of_index(cls, image_dir: Path | str, index, batch_size: int = CANONICAL_BATCH_SIZE) -> "ImageSet":
        """A dataset's images from its index (relative_path, content_sha256, split), batched within each split."""
        return cls.of(image_dir, index["relative_path"].to_list(), index["content_sha256"].to_list(),
                      index["split"].to_list(), batch_size)

    @cached_property
    def key(self) -> str:
        """What the batches depend on: the set's content hashes, their groups and the batch size."""
        return stable_hash({"content_sha256": self.content_hashes, "groups": self.groups,
                            "batch_size": self.batch_size}, length=16)

    @property
    def batching(self) -> str:
        """The feature cache's batching field for features computed in this set."""
        return f"canonical-batches-of-{self.batch_size}-in-set-{self.key}"

    @cached_property
    def batches(self) -> tuple[range, ...]:
        """Positions of each canonical batch: runs of batch_size within each group's run."""
        batches, start = [], 0
        while start < len(self.groups):
            end = start
            while end < len(self.groups) and self.groups[end] == self.groups[start]:
                end += 1
            batches += [range(b, min(b + self.batch_size, end)) for b in range(start, end, self.batch_size)]
            start = end
        return tuple(batches)

    @cached_property
    def _batch_of(self) -> dict[str, int]:
        return {self.content_hashes[p]: number for number, batch in enumerate(self.batches) for p in batch}

    def batches_holding(self, content_hashes: Iterable[str]) -> list[int]:
        """The canonical batches (ascending) holding these images; an image outside the set is an error."""
        found = set()
        for content_hash in content_hashes:
            number = self._batch_of.get(content_hash)
            if number is None:
                raise ValueError(f"image {content_hash[:12]}... is not in the image set of {self.image_dir} "
                                 f"({len(self.content_hashes)} images, set {self.key})")
            found.add(number)
        return sorted(found)


class ImageFiles(torch.utils.data.Dataset):
    """Images of a folder, decoded as the index saw them (models.data.index.load_images), optionally mirrored,
    through the backbone's eval transform."""

    def __init__(self, image_dir: Path, relative_paths: Sequence[str],
                 preprocess: Callable[[Image.Image], torch.Tensor], mirrored: bool = False,
                 view: Callable[[Image.Image, str], Image.Image] | None = None,
                 content_hashes: Sequence[str] | None = None):
        """`view`: an augmented view (models.prompting.view_recipes.AugmentedView), applied before `preprocess`; it
        is drawn from the image's content hash, so `content_hashes` are required with it."""
        self.image_dir, self.relative_paths = Path(image_dir), list(relative_paths)
        self.preprocess, self.mirrored = preprocess, mirrored
        self.view, self.content_hashes = view, list(content_hashes) if content_hashes is not None else None
        if view is not None and (self.content_hashes is None or len(self.content_hashes) != len(self.relative_paths)):
            raise ValueError("an augmented view needs the content hash of every image")

    def __len__(self) -> int:
        return len(self.relative_paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from models.data.index import load_images

        image = load_images(self.image_dir, [self.relative_paths[index]])[0]
        if self.mirrored:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.view is not None:
            image = self.view(image, self.content_hashes[index])
        return self.preprocess(image)


def loader_workers(n_images: int, batch_size: int = CANONICAL_BATCH_SIZE) -> int:
    """Worker processes decoding for the encoder: none for a few batches (starting workers costs more than it
    saves), else one per spare core up to 4; PROMPTLAB_LOADER_WORKERS overrides."""
    if os.environ.get(LOADER_WORKERS_VARIABLE):
        return max(0, int(os.environ[LOADER_WORKERS_VARIABLE]))
    if n_images < 4 * batch_size:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@torch.no_grad()
def encode_set_batches(clip_model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                       image_set: ImageSet, batches: Iterable[int], device: str | torch.device = "cpu",
                       mirrored: bool = False, view: Callable[[Image.Image, str], Image.Image] | None = None
                       ) -> tuple[list[str], torch.Tensor]:
    """Raw features of every image of these canonical batches of the set: (their content hashes, (N, E)). Each
    encoder pass is exactly one canonical batch (the images are decoded in a DataLoader meanwhile)."""
    selected = [image_set.batches[number] for number in sorted(set(batches))]
    positions = [p for batch in selected for p in batch]
    if not positions:
        raise ValueError("no images to encode")
    device = torch.device(device)
    workers = loader_workers(len(positions), image_set.batch_size)
    files = ImageFiles(image_set.image_dir, [image_set.relative_paths[p] for p in positions], preprocess, mirrored,
                       view, [image_set.content_hashes[p] for p in positions])
    batch_sampler, start = [], 0
    for batch in selected:  # indices into `files`: one loader batch per canonical batch
        batch_sampler.append(list(range(start, start + len(batch))))
        start += len(batch)
    loader = torch.utils.data.DataLoader(files, batch_sampler=batch_sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda",
                                         **({"prefetch_factor": 2} if workers else {}))
    clip_model.eval()
    precision = precision_for(device, training=False)
    chunks = []
    for pixels in loader:
        with precision.autocast():
            chunks.append(clip_model.encode_image(pixels.to(device, non_blocking=True)).float().cpu())
    return [image_set.content_hashes[p] for p in positions], torch.cat(chunks)
