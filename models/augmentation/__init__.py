"""The augmentation stage: diffusion variations of images (training-time, for the few-shot set; test-time, for
DiffTPT's views), produced through one generation interface (generation.py) and filtered by one cosine rule
(filtering.py)."""

from models.augmentation.dataset_augmentation import (AUGMENTATION_COLUMNS, AugmentationSettings,
                                                      augment_with_diffusion, empty_augmentation_table,
                                                      generation_overrides)

__all__ = ["AUGMENTATION_COLUMNS", "AugmentationSettings", "augment_with_diffusion", "empty_augmentation_table",
           "generation_overrides"]
