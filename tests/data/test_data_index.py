from __future__ import annotations

import hashlib

import polars as pl
import pytest

from models.data.datasets import DatasetFormatError, read_dataset
from models.data.index import build_dataset_index, dataset_fingerprint, load_images


def test_index_records_sizes_hashes_and_problems_without_raising(make_shapes_dataset):
    source = make_shapes_dataset()
    (source.image_dir / "circle/train_1.png").unlink()
    (source.image_dir / "square/val_0.png").write_bytes(b"\x89PNG not really an image")
    index = build_dataset_index(read_dataset(source), source.image_dir)

    assert index.height == 16
    by_path = {row["relative_path"]: row for row in index.iter_rows(named=True)}
    clean = by_path["circle/train_0.png"]
    assert (clean["file_exists"], clean["decodes"], clean["image_width"], clean["image_height"]) == (True, True, 8, 8)
    assert clean["content_sha256"] == hashlib.sha256((source.image_dir / "circle/train_0.png").read_bytes()).hexdigest()

    missing = by_path["circle/train_1.png"]
    assert (missing["file_exists"], missing["decodes"], missing["content_sha256"]) == (False, False, None)
    assert missing["image_width"] is None

    corrupt = by_path["square/val_0.png"]
    assert (corrupt["file_exists"], corrupt["decodes"], corrupt["image_width"]) == (True, False, None)
    assert corrupt["content_sha256"] == hashlib.sha256(b"\x89PNG not really an image").hexdigest()
    assert "UnidentifiedImageError" in corrupt["decode_error"]


def test_fingerprint_ignores_row_order_and_follows_content(make_shapes_dataset, png_writer):
    source = make_shapes_dataset()
    index = build_dataset_index(read_dataset(source), source.image_dir)
    fingerprint = dataset_fingerprint(index)
    assert len(fingerprint) == 64
    assert dataset_fingerprint(index.reverse()) == fingerprint
    assert dataset_fingerprint(index.with_columns(pl.col("split").replace({"val": "test"}))) != fingerprint

    png_writer(source.image_dir / "circle/test_0.png", (1, 2, 3))
    assert dataset_fingerprint(build_dataset_index(read_dataset(source), source.image_dir)) != fingerprint


def test_load_images_returns_rgb_and_names_unreadable_file(make_shapes_dataset):
    source = make_shapes_dataset()
    images = load_images(source.image_dir, ["circle/train_0.png", "square/test_1.png"])
    assert [(image.mode, image.size) for image in images] == [("RGB", (8, 8)), ("RGB", (8, 8))]

    (source.image_dir / "square/test_1.png").write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError, match="square/test_1.png"):
        load_images(source.image_dir, ["circle/train_0.png", "square/test_1.png"])
    with pytest.raises(DatasetFormatError, match="circle/absent.png"):
        load_images(source.image_dir, ["circle/absent.png"])
