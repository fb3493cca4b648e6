"""A micro catalog for the browser tests: one embedded dataset, a corpus of a few hundred pairs, the shipped tiny-clip
(installed, not pretrained), a two-epoch diffusion model, and a grid of zero-shot plus two CoOp experiments, one with
pseudolabels and one with augmentation (the catalog refuses both in one experiment), whose partitions show every kind
of metadata."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from models.catalog import DEFAULT_CATALOG_DIR

DATASET = "Shapes"
EXPERIMENT_SETTINGS = {"method": "coop", "shots": [2], "seeds": [1], "optimization": {"epochs": 3},
                       "parameters": {"n_context": 4}, "pseudolabels": {"strategy": "fpl", "per_class": 1}}
AUGMENTED_SETTINGS = {"method": "coop", "shots": [2], "seeds": [1], "optimization": {"epochs": 3},
                      "parameters": {"n_context": 4},
                      "augmentation": {"variations_per_image": 1, "strength": 0.3, "similarity_threshold": 0.0,
                                       "num_inference_steps": 2}}


def write_micro_catalog(directory: Path) -> Path:
    """Copy the shipped catalog to `directory` and shrink it; returns `directory`."""
    shutil.copytree(DEFAULT_CATALOG_DIR, directory)
    datasets = yaml.safe_load((directory / "datasets.yaml").read_text())["datasets"]
    (directory / "datasets.yaml").write_text(yaml.safe_dump({"datasets": [d for d in datasets
                                                                           if d["name"] == DATASET]}))
    world = yaml.safe_load((directory / "world.yaml").read_text())
    world["corpus"]["num_pairs"] = 256
    world.pop("diffusion_weights", None)  # pretrain this short recipe, so that the UI shows its progress and curves
    world["diffusion"].update(epochs=2, batch_size=64)
    world["benchmark"]["images_per_class"] = {"train": 5, "val": 4, "test": 3}
    (directory / "world.yaml").write_text(yaml.safe_dump(world))
    (directory / "experiments.yaml").write_text(yaml.safe_dump({"grid": [{"method": "zero_shot"},
                                                                         EXPERIMENT_SETTINGS, AUGMENTED_SETTINGS]}))
    return directory


def experiment_key(catalog_dir: Path, augmented: bool = False) -> str:
    """The key of the CoOp experiment with pseudolabels (the partition the tests launch), or the augmented one."""
    from models.catalog import load_catalog

    return next(key for key, experiment in load_catalog(catalog_dir).experiments.items()
                if experiment.method == "coop" and (experiment.augmentation is not None) == augmented)
