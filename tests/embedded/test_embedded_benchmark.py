"""The embedded benchmark: CoOp layout, consistent labels, disjoint splits, determinism, atomic writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.embedded import benchmark
from models.embedded.benchmark import (
    EMBEDDED_DATASET_NAMES,
    SPLITS,
    build_embedded_dataset,
    digit_image_from_sklearn,
    embedded_classnames,
    suggested_templates,
)
from models.embedded.corpus import load_corpus, write_corpus

SMALL_COUNTS = {"train": 3, "val": 2, "test": 2}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("benchmark")
    return {name: build_embedded_dataset(name, root / name, seed=7, images_per_class=SMALL_COUNTS) for name in EMBEDDED_DATASET_NAMES}


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def _split_rows(split_file: Path) -> dict[str, list[list]]:
    return json.loads(split_file.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", EMBEDDED_DATASET_NAMES)
def test_layout_schema_and_labels(built: dict[str, Path], name: str) -> None:
    split_file = built[name]
    assert split_file.name == f"split_zhou_{name}.json"
    image_dir = split_file.parent / "images"
    classnames = embedded_classnames(name)
    assert len(set(classnames)) == len(classnames)
    assert all(classname == classname.lower() and "_" not in classname for classname in classnames)
    rows = _split_rows(split_file)
    assert list(rows) == list(SPLITS)
    listed = set()
    for split, split_rows in rows.items():
        for relative_path, label, classname in split_rows:
            assert isinstance(relative_path, str) and isinstance(label, int) and isinstance(classname, str)
            assert classnames[label] == classname
            folder, file_name = relative_path.split("/")
            assert folder == classname.replace(" ", "_")
            assert file_name.startswith(f"{split}_") and file_name.endswith(".png")
            with Image.open(image_dir / relative_path) as image:
                assert image.size == (32, 32) and image.mode == "RGB"
            listed.add(relative_path)
    on_disk = {path.relative_to(image_dir).as_posix() for path in image_dir.rglob("*.png")}
    assert on_disk == listed  # no stray files, no missing ones


@pytest.mark.parametrize("name", EMBEDDED_DATASET_NAMES)
def test_every_class_in_every_split_and_no_image_in_two_splits(built: dict[str, Path], name: str) -> None:
    split_file = built[name]
    rows = _split_rows(split_file)
    digests_by_split = {}
    for split in SPLITS:
        labels = [label for _path, label, _classname in rows[split]]
        assert sorted(set(labels)) == list(range(len(embedded_classnames(name)))), split
        assert all(labels.count(label) == SMALL_COUNTS[split] for label in set(labels)), split
        digests_by_split[split] = {
            hashlib.sha256((split_file.parent / "images" / path).read_bytes()).hexdigest() for path, _label, _name in rows[split]
        }
    for index, first in enumerate(SPLITS):
        for second in SPLITS[index + 1 :]:
            assert not digests_by_split[first] & digests_by_split[second], (first, second)


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    for name in ("ColourShapes", "Digits"):
        first = build_embedded_dataset(name, tmp_path / f"{name}-a", seed=1, images_per_class=SMALL_COUNTS).parent
        second = build_embedded_dataset(name, tmp_path / f"{name}-b", seed=1, images_per_class=SMALL_COUNTS).parent
        other = build_embedded_dataset(name, tmp_path / f"{name}-c", seed=2, images_per_class=SMALL_COUNTS).parent
        assert _tree_bytes(first) == _tree_bytes(second)
        assert _tree_bytes(first) != _tree_bytes(other)


def test_default_sizes(tmp_path: Path) -> None:
    rows = _split_rows(build_embedded_dataset("Textures", tmp_path / "Textures", seed=0))
    classes = len(embedded_classnames("Textures"))
    assert [len(rows[split]) for split in SPLITS] == [48 * classes, 12 * classes, 40 * classes]


def test_digits_are_the_real_scikit_learn_images(built: dict[str, Path]) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The upscaled image still is the scikit-learn digit: shrunk back to 8x8 it matches the original closely.
    for pixels in bunch.images[:20]:
        shrunk = np.asarray(digit_image_from_sklearn(pixels).convert("L").resize((8, 8), Image.Resampling.BOX), dtype=float)
        assert np.corrcoef(shrunk.ravel(), pixels.ravel())[0, 1] > 0.9
    real = {}
    for pixels, label in zip(bunch.images, bunch.target):
        real[np.asarray(digit_image_from_sklearn(pixels)).tobytes()] = int(label)
    assert embedded_classnames("Digits") == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    split_file = built["Digits"]
    for split_rows in _split_rows(split_file).values():
        for relative_path, label, _classname in split_rows:
            with Image.open(split_file.parent / "images" / relative_path) as image:
                assert real.get(np.asarray(image.convert("RGB")).tobytes()) == label, relative_path


def test_digits_test_split_takes_the_rest_by_default(tmp_path: Path) -> None:
    rows = _split_rows(build_embedded_dataset("Digits", tmp_path / "Digits", seed=0))
    assert len(rows["train"]) == 800 and len(rows["val"]) == 200
    assert len(rows["train"]) + len(rows["val"]) + len(rows["test"]) == 1797
    with pytest.raises(ValueError, match="too few"):
        build_embedded_dataset("Digits", tmp_path / "too-many", seed=0, images_per_class={"train": 150, "val": 30, "test": 30})


def test_domain_shifted_variants_share_classes_and_really_shift(built: dict[str, Path]) -> None:
    assert embedded_classnames("ShapesSketch") == embedded_classnames("Shapes") == embedded_classnames("ShapesNoisy")

    def roughness(name: str) -> float:
        split_file = built[name]
        values = []
        for relative_path, _label, _classname in _split_rows(split_file)["test"]:
            with Image.open(split_file.parent / "images" / relative_path) as image:
                pixels = np.asarray(image, dtype=np.float32)
            values.append(np.abs(np.diff(pixels, axis=1)).mean())
        return float(np.mean(values))

    assert roughness("ShapesNoisy") > 2 * roughness("Shapes")


def test_benchmark_images_never_repeat_corpus_images(built: dict[str, Path], tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", 200, seed=7)
    images, _captions = load_corpus(tmp_path / "corpus")
    corpus_digests = {image.tobytes() for image in images}
    split_file = built["Shapes"]
    for split_rows in _split_rows(split_file).values():
        for relative_path, _label, _classname in split_rows:
            with Image.open(split_file.parent / "images" / relative_path) as image:
                assert np.asarray(image).tobytes() not in corpus_digests


def test_templates_cover_every_dataset() -> None:
    templates = suggested_templates()
    assert tuple(templates) == EMBEDDED_DATASET_NAMES
    assert all(template.count("{}") == 1 for template in templates.values())
    assert templates["Digits"] == "a photo of the digit {}."


def test_bad_requests_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known datasets: Shapes"):
        build_embedded_dataset("Flowers", tmp_path / "x", seed=0)
    with pytest.raises(ValueError, match="unknown split 'training'"):
        build_embedded_dataset("Shapes", tmp_path / "x", seed=0, images_per_class={"training": 3})
    with pytest.raises(ValueError, match="positive integer"):
        build_embedded_dataset("Shapes", tmp_path / "x", seed=0, images_per_class={"val": 0})
    assert not (tmp_path / "x").exists()


def test_crash_mid_write_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "Shapes"
    split_file = build_embedded_dataset("Shapes", target, seed=0, images_per_class=SMALL_COUNTS)
    before = _tree_bytes(target)
    real_save = benchmark._save_png
    saved = []

    def save_then_fail(path: Path, image: Image.Image) -> None:
        if len(saved) == 5:
            raise OSError("disk full")
        saved.append(path)
        real_save(path, image)

    monkeypatch.setattr(benchmark, "_save_png", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_embedded_dataset("Shapes", target, seed=1, images_per_class=SMALL_COUNTS)
    saved.clear()
    with pytest.raises(OSError, match="disk full"):
        build_embedded_dataset("Colours", tmp_path / "Colours", seed=1, images_per_class=SMALL_COUNTS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["Shapes"]
    assert _tree_bytes(target) == before and split_file.is_file()
