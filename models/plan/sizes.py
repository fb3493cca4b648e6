"""How big each dataset of a plan is, and how many of its images each stage reads.

Counts come from the catalog entry's `published` sizes, from the folder on disk when asked (the preflight's reader,
models/data/preflight.py), or, for the embedded world, from world.yaml's images per class. The images curation
inspects follow models/data/curation.py: all of them, or above LISTED_ONLY_ABOVE training images only the few-shot
draws of the grid (their expected union), val and test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from models.catalog import Catalog, DatasetEntry

# The few-shot draws curation inspects at ImageNet scale: every grid's shots and seeds.
from models.data.fewshot import PROTOCOL_SEEDS as FEW_SHOT_SEEDS  # noqa: E402
from models.data.fewshot import PROTOCOL_SHOTS as FEW_SHOT_SHOTS  # noqa: E402
PUBLISHED, ON_DISK, EMBEDDED, UNKNOWN = "published", "on disk", "embedded", "unknown"


@dataclass(frozen=True)
class DatasetSize:
    name: str
    classes: int
    train: int
    val: int
    test: int
    counted: str  # published | on disk | embedded | unknown

    @property
    def known(self) -> bool:
        return self.counted != UNKNOWN

    def per_class(self, split: str) -> float:
        return getattr(self, split) / self.classes if self.classes else 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def dataset_sizes(catalog: Catalog, names: Sequence[str], from_disk: bool = False) -> dict[str, DatasetSize]:
    return {name: dataset_size(catalog, catalog.dataset(name), from_disk) for name in names}


def dataset_size(catalog: Catalog, entry: DatasetEntry, from_disk: bool = False) -> DatasetSize:
    """The dataset's classes and split sizes: on disk (when `from_disk` and its folder reads), else published, else
    the embedded world's, else unknown (zeros)."""
    if entry.source == "embedded":
        from models.embedded.benchmark import embedded_classnames

        classes = len(embedded_classnames(entry.name))
        per_class = catalog.world["benchmark"]["images_per_class"]
        return DatasetSize(entry.name, classes, *(classes * per_class[split] for split in ("train", "val", "test")),
                           EMBEDDED)
    if from_disk:
        from models.data.preflight import FOUND, check_dataset

        check = check_dataset(entry)
        if check.status == FOUND and check.counts.get("classes"):
            counts = check.counts
            return DatasetSize(entry.name, counts["classes"], counts.get("train", 0), counts.get("val", 0),
                               counts.get("test", 0), ON_DISK)
    published = entry.published_counts
    if published.get("classes"):
        return DatasetSize(entry.name, published["classes"], published.get("train", 0), published.get("val", 0),
                           published.get("test", 0), PUBLISHED)
    return DatasetSize(entry.name, 0, 0, 0, 0, UNKNOWN)


def expected_distinct(per_class: float, draws: Sequence[int]) -> float:
    """Expected distinct images of a class of `per_class` images after independent draws of these sizes."""
    if per_class <= 0:
        return 0.0
    missed = math.prod(1.0 - min(draw, per_class) / per_class for draw in draws)
    return per_class * (1.0 - missed)


def inspected_images(catalog: Catalog, entry: DatasetEntry, size: DatasetSize) -> int:
    """Images the curation index hashes and decodes (models/data/curation.py rows_experiments_read): the training
    images it keeps, every val and every test image."""
    return trained_images_encoded(catalog, entry, size) + size.val + size.test


def trained_images_encoded(catalog: Catalog, entry: DatasetEntry, size: DatasetSize) -> int:
    """Training images the index keeps (and the features stage encodes): every one, or at ImageNet scale the
    expected union of the few-shot draws of every shot count and seed."""
    from models.data.curation import LISTED_ONLY_ABOVE

    whole_training_set = any(experiment.setting is not None for experiment in catalog.experiments.values())
    if entry.test_only or size.train <= LISTED_ONLY_ABOVE or whole_training_set:
        return size.train
    draws = [shots for shots in FEW_SHOT_SHOTS for _ in FEW_SHOT_SEEDS]
    return round(size.classes * expected_distinct(size.per_class("train"), draws))
