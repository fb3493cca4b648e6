"""Near-duplicates across splits (models/data/near_duplicates.py): copies the byte hash misses are caught by path,
distinct pictures pass, the allow-list and threshold come from the catalog, bad catalog values are refused; the
search returns exactly the exhaustive comparison's pairs."""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image, ImageDraw, PngImagePlugin

import models.data.near_duplicates as near_duplicates
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog
from models.data.datasets import read_dataset
from models.data.expectations import validate_dataset_index
from models.data.index import build_dataset_index
from models.data.near_duplicates import (DEFAULT_MAX_DISTANCE, THUMBNAIL_COLUMN, NearDuplicatePolicy,
                                         find_near_duplicates, find_near_duplicates_exhaustive, image_thumbnail,
                                         thumbnail_distance)

TRAIN_IMAGE = "circle/train_0.png"
TEST_IMAGE = "circle/test_1.png"
CHECK = "no_near_duplicates_across_splits"


def picture(shape: str = "ellipse", size: int = 32) -> Image.Image:
    """A 32 px picture like the embedded ones: a gradient background, a filled shape and a dark line."""
    ramp = np.linspace(40, 220, size).astype(np.uint8)
    pixels = np.stack([np.tile(ramp[:, None], (1, size)), np.full((size, size), 120, np.uint8),
                       np.tile(ramp[None, ::-1], (size, 1))], axis=-1)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    getattr(draw, shape)((size // 5, size // 4, size * 3 // 4, size * 4 // 5), fill=(230, 200, 40))
    draw.line((0, size - 1, size - 1, 0), fill=(20, 20, 20), width=2)
    return image


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _resaved_png(image: Image.Image) -> bytes:
    # Same pixels, other bytes: another compression level and a text chunk.
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "re-saved")
    return _encoded(image, "PNG", compress_level=1, pnginfo=info)


# name -> (file name of the copy in test, its bytes); the split file is edited to point at the copy.
COPIES: dict[str, Callable[[Image.Image], tuple[str, bytes]]] = {
    "resaved_png": lambda image: ("circle/test_1.png", _resaved_png(image)),
    "jpeg_reencode": lambda image: ("circle/test_1.jpg", _encoded(image, "JPEG", quality=75)),
    "upscaled": lambda image: ("circle/test_1.png", _encoded(image.resize((96, 96), Image.Resampling.BICUBIC), "PNG")),
    "downscaled": lambda image: ("circle/test_1.png",
                                 _encoded(image.resize((24, 24), Image.Resampling.LANCZOS), "PNG")),
    "other_format_bmp": lambda image: ("circle/test_1.bmp", _encoded(image, "BMP")),
    "other_format_webp": lambda image: ("circle/test_1.webp", _encoded(image, "WEBP", quality=80)),
}


def _dataset_with_copy(make_shapes_dataset, copy: Callable[[Image.Image], tuple[str, bytes]]):
    original = picture()
    copy_path, copy_bytes = copy(original)

    def point_test_row_at_copy(rows):
        rows["test"] = [[copy_path if path == TEST_IMAGE else path, label, name] for path, label, name in rows["test"]]

    source = make_shapes_dataset(point_test_row_at_copy)
    original.save(source.image_dir / TRAIN_IMAGE)
    (source.image_dir / TEST_IMAGE).unlink()
    (source.image_dir / copy_path).write_bytes(copy_bytes)
    return source, copy_path


@pytest.mark.parametrize("copy_name", list(COPIES))
def test_a_copy_of_a_train_image_in_test_is_caught_naming_both_paths(make_shapes_dataset, copy_name):
    source, copy_path = _dataset_with_copy(make_shapes_dataset, COPIES[copy_name])
    train_bytes, copy_bytes = ((source.image_dir / path).read_bytes() for path in (TRAIN_IMAGE, copy_path))
    assert hashlib.sha256(train_bytes).digest() != hashlib.sha256(copy_bytes).digest()  # the byte hash is blind

    report = validate_dataset_index(build_dataset_index(read_dataset(source), source.image_dir), source.name)
    assert report.failed_names == [CHECK]
    details = report.outcome(CHECK).details
    assert details.startswith("1 near-duplicate pairs across splits"), details
    assert f"{TRAIN_IMAGE} (train) ~ {copy_path} (test) distance" in details, details


def test_distinct_pictures_in_train_and_test_pass(make_shapes_dataset):
    source = make_shapes_dataset()
    picture("ellipse").save(source.image_dir / TRAIN_IMAGE)
    picture("rectangle").save(source.image_dir / TEST_IMAGE)  # same background, colour and place; other shape

    index = build_dataset_index(read_dataset(source), source.image_dir)
    report = validate_dataset_index(index, source.name)
    assert report.success, report.outcomes
    assert report.outcome(CHECK).details == f"no two images in different splits within thumbnail distance " \
                                            f"{DEFAULT_MAX_DISTANCE}"
    thumbnails = dict(index.select("relative_path", THUMBNAIL_COLUMN).iter_rows())
    assert thumbnail_distance(thumbnails[TRAIN_IMAGE], thumbnails[TEST_IMAGE]) > DEFAULT_MAX_DISTANCE


def test_val_and_test_pairs_count_and_pairs_within_a_split_do_not(make_shapes_dataset):
    def val_copy_of_test(rows):
        rows["val"].append(["circle/val_copy.png", 0, "circle"])
        rows["train"].append(["circle/train_copy.png", 0, "circle"])

    source = make_shapes_dataset(val_copy_of_test)
    for path in (TEST_IMAGE, "circle/val_copy.png"):
        picture("ellipse").save(source.image_dir / path)
    # Two copies inside train are no leakage.
    shutil.copyfile(source.image_dir / TRAIN_IMAGE, source.image_dir / "circle/train_copy.png")

    pairs, exempted = find_near_duplicates(build_dataset_index(read_dataset(source), source.image_dir),
                                           NearDuplicatePolicy())
    assert pairs.select("path_a", "split_a", "path_b", "split_b").rows() == [
        ("circle/val_copy.png", "val", TEST_IMAGE, "test")]
    assert pairs["distance"].to_list() == [0.0]
    assert exempted == 0


def test_comparison_in_blocks_finds_the_same_pairs(monkeypatch):
    rng = np.random.default_rng(3)
    thumbnails = [bytes(row) for row in rng.integers(0, 256, (40, 192), dtype=np.uint8)]
    splits = ["train"] * 20 + ["val"] * 5 + ["test"] * 15
    # Every test image i copies train image i (plus codec-like noise of +-1 level): 15 pairs.
    for position in range(15):
        noisy = np.frombuffer(thumbnails[position], np.uint8).astype(int) + rng.integers(-1, 2, 192)
        thumbnails[25 + position] = bytes(np.clip(noisy, 0, 255).astype(np.uint8))
    index = pl.DataFrame({"relative_path": [f"{i}.png" for i in range(40)], "split": splits,
                          THUMBNAIL_COLUMN: thumbnails}, schema_overrides={THUMBNAIL_COLUMN: pl.Binary})

    whole, _ = find_near_duplicates_exhaustive(index, NearDuplicatePolicy())
    monkeypatch.setattr(near_duplicates, "COMPARISON_BLOCK_ROWS", 3)
    blocked, _ = find_near_duplicates_exhaustive(index, NearDuplicatePolicy())
    assert sorted(whole.select("path_a", "path_b").rows()) == sorted((f"{i}.png", f"{25 + i}.png") for i in range(15))
    assert blocked.equals(whole)
    assert find_near_duplicates(index, NearDuplicatePolicy())[0].equals(whole)


# ------------------------------------------------------------------------- the search against the exhaustive method
SQUARED_LIMIT = DEFAULT_MAX_DISTANCE ** 2 * 192  # 622.08: squared weighted differences summed over 192 values


def smooth_thumbnails(count: int, seed: int) -> np.ndarray:
    """(count, 192) uint8 thumbnails of random smooth pictures (low-frequency luma and chroma), in [20, 235] so that
    planted changes of a few levels never clip; a fifth are nearly flat, the crowded kind of picture."""
    rng = np.random.default_rng(seed)
    cells = np.arange(8) + 0.5
    waves = np.stack([np.cos(np.pi * fy * cells)[:, None] * np.cos(np.pi * fx * cells)[None, :]
                      for fy in range(3) for fx in range(3)])  # 9 low-frequency 8x8 patterns
    amplitude = np.where(rng.random(count) < 0.2, 2.0, 30.0)[:, None, None]
    channels = [rng.uniform(60, 195, (count, 1, 1)) + amplitude * np.einsum("nw,wyx->nyx", rng.normal(size=(count, 9)),
                                                                             waves) / 3 for _ in range(3)]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 20, 235).astype(np.uint8).reshape(count, 192)


def planted(values: np.ndarray, luma_changes: list[tuple[int, int]], chroma_changes: int) -> np.ndarray:
    """A copy of one thumbnail with luma cells moved by (count, levels) and `chroma_changes` chroma values by 1: its
    squared weighted distance is sum(count * levels^2) + chroma_changes / 16, exactly."""
    copy = values.astype(int)
    position = 0
    for count, levels in luma_changes:
        copy[position * 3:(position + count) * 3:3] += levels * np.where(np.arange(count) % 2, 1, -1)
        position += count
    copy[1:1 + 3 * chroma_changes:3] += 1
    return copy.astype(np.uint8)


# squared distance 622 + 1/16 = 622.0625 (distance 1.79998) and 622 + 2/16 (1.80007) around the 622.08 limit
JUST_UNDER = ([(24, 5), (22, 1)], 1)
JUST_OVER = ([(24, 5), (22, 1)], 2)


def index_of(values: np.ndarray, splits: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"relative_path": [f"{i:05d}.png" for i in range(len(values))], "split": splits,
                         THUMBNAIL_COLUMN: [bytes(row) for row in values]},
                        schema_overrides={THUMBNAIL_COLUMN: pl.Binary})


@pytest.fixture
def planted_index() -> tuple[pl.DataFrame, set[tuple[str, str]], set[tuple[str, str]]]:
    """3,000 smooth thumbnails (40% train, 10% val, 50% test) with copies planted just under and just over the
    threshold across every pair of splits, exact copies, and copies inside one split (never reported)."""
    rng = np.random.default_rng(7)
    values = smooth_thumbnails(3000, seed=1)
    splits = ["train"] * 1200 + ["val"] * 300 + ["test"] * 1500
    under, over = set(), set()
    sources = rng.choice(1200, 40, replace=False)
    for number, source in enumerate(sources):
        # source in train (or val), copy in val or test
        source = int(source) if number < 30 else 1200 + number
        target = (1200 + 100 + number) if number < 10 else (1500 + number * 7)
        change = (JUST_UNDER, JUST_OVER, ([], 0), ([(10, 1)], 0))[number % 4]
        values[target] = planted(values[source], *change)
        pair = (f"{source:05d}.png", f"{target:05d}.png")
        (over if change is JUST_OVER else under).add(pair)
    values[5] = values[6]  # inside train
    values[2999] = planted(values[2998], *JUST_UNDER)  # inside test
    return index_of(values, splits), under, over


def test_planted_pairs_are_measured_where_they_were_planted(planted_index):
    index, under, over = planted_index
    thumbnails = dict(index.select("relative_path", THUMBNAIL_COLUMN).iter_rows())
    assert {thumbnail_distance(thumbnails[a], thumbnails[b]) <= DEFAULT_MAX_DISTANCE for a, b in under} == {True}
    assert {thumbnail_distance(thumbnails[a], thumbnails[b]) <= DEFAULT_MAX_DISTANCE for a, b in over} == {False}
    assert max(thumbnail_distance(thumbnails[a], thumbnails[b]) for a, b in under) > 1.7999
    assert min(thumbnail_distance(thumbnails[a], thumbnails[b]) for a, b in over) < 1.8001


@pytest.mark.parametrize("boxes", ["default", "tiny"])
def test_search_returns_the_exhaustive_pairs_just_under_and_not_just_over(planted_index, monkeypatch, boxes):
    index, under, over = planted_index
    if boxes == "tiny":  # many groups and leaves, so that boxes, not the sizes, decide what is compared
        monkeypatch.setattr(near_duplicates, "GROUP_ROWS", 16)
        monkeypatch.setattr(near_duplicates, "LEAF_ROWS", 4)
    exhaustive, _ = find_near_duplicates_exhaustive(index, NearDuplicatePolicy())
    searched, _ = find_near_duplicates(index, NearDuplicatePolicy())
    assert searched.equals(exhaustive)
    found = set(searched.select("path_a", "path_b").rows())
    assert under <= found and not over & found
    assert not {("00005.png", "00006.png"), ("02998.png", "02999.png")} & found


@pytest.mark.parametrize("max_distance", [0.0, 1.0, 3.0, 5.0])
def test_search_returns_the_exhaustive_pairs_at_other_thresholds(planted_index, max_distance):
    index, _, _ = planted_index
    policy = NearDuplicatePolicy(max_distance=max_distance)
    exhaustive, _ = find_near_duplicates_exhaustive(index, policy)
    assert find_near_duplicates(index, policy)[0].equals(exhaustive)
    assert exhaustive.height >= {0.0: 10, 1.0: 200, 3.0: 5000, 5.0: 20000}[max_distance]


def test_search_handles_empty_and_single_image_splits():
    values = smooth_thumbnails(5, seed=3)
    for splits in (["train"] * 5, ["train", "test", "test", "test", "test"], ["val", "train", "test", "train", "val"]):
        index = index_of(values, splits)
        assert find_near_duplicates(index, NearDuplicatePolicy(max_distance=255.0))[0].equals(
            find_near_duplicates_exhaustive(index, NearDuplicatePolicy(max_distance=255.0))[0])
    empty = index_of(values[:0], [])
    assert find_near_duplicates(empty, NearDuplicatePolicy())[0].height == 0


def varied_picture(rng: np.random.Generator) -> Image.Image:
    """Like `picture`, with a random shape, colours, place and gradient direction."""
    size = int(rng.choice([32, 48, 64]))
    ramp = np.linspace(*rng.uniform(20, 235, 2), size)
    background = np.stack([np.tile(ramp[:, None], (1, size)), np.full((size, size), rng.uniform(40, 200)),
                           np.tile(ramp[None, ::-1], (size, 1))], axis=-1)
    image = Image.fromarray(background.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    x, y = rng.integers(0, size // 2, 2)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    getattr(draw, str(rng.choice(["ellipse", "rectangle"])))((x, y, x + size // 3, y + size // 3), fill=colour)
    draw.line((0, int(rng.integers(size)), size - 1, int(rng.integers(size))), fill=(20, 20, 20), width=2)
    return image


def test_search_returns_the_exhaustive_pairs_on_decoded_reencoded_copies():
    """Real copies: pictures in train, each re-encoded one way (JPEG, WebP, BMP, resized), decoded, in val or test."""
    rng = np.random.default_rng(11)
    kinds = list(COPIES.values())
    thumbnails, splits, copies = [], [], []
    for number in range(240):
        original = varied_picture(rng)
        thumbnails.append(image_thumbnail(original))
        splits.append("train")
        if number % 2 == 0:
            _, encoded = kinds[number // 2 % len(kinds)](original)
            with Image.open(io.BytesIO(encoded)) as decoded:
                thumbnails.append(image_thumbnail(decoded.convert("RGB")))
            splits.append("val" if number % 4 == 0 else "test")
            copies.append((len(thumbnails) - 2, len(thumbnails) - 1))
    index = pl.DataFrame({"relative_path": [f"{i:04d}.png" for i in range(len(thumbnails))], "split": splits,
                          THUMBNAIL_COLUMN: thumbnails}, schema_overrides={THUMBNAIL_COLUMN: pl.Binary})
    exhaustive, _ = find_near_duplicates_exhaustive(index, NearDuplicatePolicy())
    searched, _ = find_near_duplicates(index, NearDuplicatePolicy())
    assert searched.equals(exhaustive)
    caught = {(f"{a:04d}.png", f"{b:04d}.png") for a, b in copies
              if thumbnail_distance(thumbnails[a], thumbnails[b]) <= DEFAULT_MAX_DISTANCE}
    assert len(caught) >= 0.9 * len(copies)
    assert caught <= set(searched.select("path_a", "path_b").rows())


def test_allow_list_exempts_a_listed_pair_in_either_order(make_shapes_dataset):
    source, copy_path = _dataset_with_copy(make_shapes_dataset, COPIES["resaved_png"])
    index = build_dataset_index(read_dataset(source), source.image_dir)
    for pair in ([TRAIN_IMAGE, copy_path], [copy_path, TRAIN_IMAGE]):
        report = validate_dataset_index(index, source.name, NearDuplicatePolicy.allowing(DEFAULT_MAX_DISTANCE, [pair]))
        assert report.success, report.outcomes
        assert "(1 allow-listed pair(s) exempted)" in report.outcome(CHECK).details
    other_pair = NearDuplicatePolicy.allowing(DEFAULT_MAX_DISTANCE, [[TRAIN_IMAGE, "square/test_0.png"]])
    assert validate_dataset_index(index, source.name, other_pair).failed_names == [CHECK]


# ------------------------------------------------------------------------------------------------ catalog


@pytest.fixture
def catalog_dir(tmp_path) -> Path:
    directory = tmp_path / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, directory, ignore=shutil.ignore_patterns("pretrained"))
    return directory


def _set_shapes_policy(catalog_dir: Path, policy) -> None:
    path = catalog_dir / "datasets.yaml"
    content = yaml.safe_load(path.read_text())
    assert content["datasets"][0]["name"] == "Shapes"
    content["datasets"][0]["near_duplicates"] = policy
    path.write_text(yaml.safe_dump(content))


def test_threshold_and_allow_list_come_from_the_catalog(catalog_dir, make_shapes_dataset):
    source, copy_path = _dataset_with_copy(make_shapes_dataset, COPIES["jpeg_reencode"])
    index = build_dataset_index(read_dataset(source), source.image_dir)
    thumbnails = dict(index.select("relative_path", THUMBNAIL_COLUMN).iter_rows())
    jpeg_distance = thumbnail_distance(thumbnails[TRAIN_IMAGE], thumbnails[copy_path])
    assert 0 < jpeg_distance <= DEFAULT_MAX_DISTANCE

    # A threshold below the JPEG copy's distance lets it through; the default catches it.
    _set_shapes_policy(catalog_dir, {"max_distance": round(jpeg_distance / 2, 3)})
    strict_below = load_catalog(catalog_dir).dataset("Shapes").near_duplicates
    assert strict_below.max_distance == round(jpeg_distance / 2, 3)
    assert validate_dataset_index(index, "Shapes", strict_below).success
    assert load_catalog(catalog_dir).dataset("Colours").near_duplicates == NearDuplicatePolicy()

    _set_shapes_policy(catalog_dir, {"allow": [[copy_path, TRAIN_IMAGE]]})
    allowing = load_catalog(catalog_dir).dataset("Shapes").near_duplicates
    assert allowing.max_distance == DEFAULT_MAX_DISTANCE
    assert validate_dataset_index(index, "Shapes", allowing).success
    assert validate_dataset_index(index, "Shapes", NearDuplicatePolicy()).failed_names == [CHECK]


@pytest.mark.parametrize(("policy", "message"), [
    ({"max_distance": -1}, r"near_duplicates.max_distance: expected a number of grey levels in \[0, 256\), got -1"),
    ({"max_distance": "2"}, r"near_duplicates.max_distance: .*got '2'"),
    ({"max_distance": True}, r"near_duplicates.max_distance: .*got True"),
    ({"max_distance": float("nan")}, r"near_duplicates.max_distance: .*got nan"),
    ({"threshold": 2}, r"near_duplicates: unknown field\(s\) \['threshold'\]"),
    ({"allow": [["circle/a.png"]]}, r"near_duplicates.allow\[0\]: expected two different relative image paths"),
    ({"allow": [["circle/a.png", "circle/a.png"]]}, r"near_duplicates.allow\[0\]: expected two different"),
    ({"allow": "circle/a.png"}, r"near_duplicates.allow: expected a list"),
    ([1.5], r"near_duplicates: expected a mapping"),
])
def test_bad_catalog_values_are_refused_naming_file_entry_and_field(catalog_dir, policy, message):
    _set_shapes_policy(catalog_dir, policy)
    with pytest.raises(CatalogError, match=r"datasets.yaml: datasets\[0\] \(Shapes\): " + message):
        load_catalog(catalog_dir)


def test_shipped_catalog_policies_parse():
    catalog = load_catalog()
    for entry in catalog.datasets.values():
        assert 0 <= entry.near_duplicates.max_distance <= DEFAULT_MAX_DISTANCE


def test_thumbnail_is_192_bytes_of_8x8_ycbcr_cells():
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 16, 32))  # left half blue
    thumbnail = np.frombuffer(image_thumbnail(image), np.uint8).reshape(8, 8, 3)
    assert thumbnail.shape == (8, 8, 3)
    red, blue = (np.asarray(Image.new("RGB", (1, 1), colour).convert("YCbCr"))[0, 0] for colour in
                 ((255, 0, 0), (0, 0, 255)))
    assert (thumbnail[:, :4] == blue).all() and (thumbnail[:, 4:] == red).all()
