"""bench/ is not an installed package: make the repository root importable for its tests."""

import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))


@pytest.fixture(scope="session")
def random_tiny_clip(tmp_path_factory):
    """The catalog's tiny-clip architecture with seeded random weights, loaded through the backbone loader."""
    from bench.inputs import BenchBackbone, write_random_clip
    from models.backbones.loader import load_backbone

    directory = write_random_clip(tmp_path_factory.mktemp("bench_backbone") / "tiny-clip")
    return load_backbone(BenchBackbone("tiny-clip", str(directory), "random").spec())
