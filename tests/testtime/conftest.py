"""The shipped tiny-clip (the embedded backbone's real pretrained weights) and a few embedded test images."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

CATALOG_DIR = Path(__file__).resolve().parents[2] / "assets_catalog"


@dataclass
class TestImages:
    image_dir: Path
    relative_paths: list[str]
    content_hashes: list[str]
    labels: list[int]
    classnames: list[str]
    template: str


@pytest.fixture(scope="session")
def tiny_clip():
    from models.backbones.loader import BackboneSpec, load_backbone

    folder = CATALOG_DIR / "pretrained" / "tiny-clip"
    return load_backbone(BackboneSpec(name="tiny-clip", source="local_dir", model_name="tiny-clip", path=str(folder)))


def _embedded_images(root: Path, name: str, per_class: int) -> TestImages:
    from models.embedded.benchmark import build_embedded_dataset
    from models.provenance import sha256_file

    split_file = build_embedded_dataset(name, root / name, seed=3,
                                        images_per_class={"train": 1, "val": 1, "test": per_class})
    rows = json.loads(split_file.read_text())["test"]
    info = json.loads((root / name / "embedded_dataset.json").read_text())
    image_dir = root / name / "images"
    return TestImages(image_dir, [r[0] for r in rows], [sha256_file(image_dir / r[0]) for r in rows],
                      [int(r[1]) for r in rows], list(info["classnames"]), info["template"])


@pytest.fixture(scope="session")
def shapes_test_images(tmp_path_factory):
    """Shapes: 2 test images per class (20 classes)."""
    return _embedded_images(tmp_path_factory.mktemp("testtime_images"), "Shapes", 2)


@pytest.fixture(scope="session")
def noisy_test_images(tmp_path_factory):
    """ShapesNoisy (a shifted variant of Shapes): 2 test images per class."""
    return _embedded_images(tmp_path_factory.mktemp("testtime_noisy"), "ShapesNoisy", 2)
