from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from models.data.datasets import DatasetFormatError, read_dataset
from models.data.index import build_dataset_index, conversion_summary, dataset_fingerprint, load_images


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


# ------------------------------------------------------------------------------------------------ conversions


def _index_rows(source) -> dict[str, dict]:
    index = build_dataset_index(read_dataset(source), source.image_dir)
    return {row["relative_path"]: row for row in index.iter_rows(named=True)}


def test_transparent_pixels_are_composited_on_white_and_the_conversion_recorded(make_shapes_dataset):
    source = make_shapes_dataset()
    # Red stored under zero alpha: a plain convert("RGB") shows red, a viewer shows the background.
    Image.new("RGBA", (8, 8), (200, 0, 0, 0)).save(source.image_dir / "circle/train_0.png")
    half = Image.new("RGBA", (8, 8), (200, 0, 0, 255))
    half.paste((0, 0, 200, 128), (0, 0, 8, 4))  # top half: translucent blue
    half.save(source.image_dir / "circle/train_1.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 255)).save(source.image_dir / "square/train_0.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 255, 0] + [200, 0, 0] * 255)
    palette.save(source.image_dir / "square/train_1.png", transparency=1)  # every pixel is the transparent index

    rows = _index_rows(source)
    assert rows["circle/train_0.png"]["conversion"] == \
        "RGBA->RGB composited on white (100.0% of pixels transparent or translucent)"
    assert rows["circle/train_1.png"]["conversion"] == \
        "RGBA->RGB composited on white (50.0% of pixels transparent or translucent)"
    assert rows["square/train_0.png"]["conversion"] == "RGBA->RGB (alpha opaque everywhere, dropped)"
    assert rows["square/train_1.png"]["conversion"].startswith("P->RGB composited on white (100.0%")
    assert rows["circle/train_2.png"]["conversion"] is None  # RGB stays as it is

    transparent, half_image, opaque, palette_image = load_images(
        source.image_dir, ["circle/train_0.png", "circle/train_1.png", "square/train_0.png", "square/train_1.png"])
    assert set(transparent.getdata()) == {(255, 255, 255)}
    assert set(palette_image.getdata()) == {(255, 255, 255)}
    # 128/255 of blue over white on top, opaque red below.
    assert half_image.getpixel((0, 0)) == (127, 127, 227) and half_image.getpixel((0, 7)) == (200, 0, 0)
    assert set(opaque.getdata()) == {(10, 20, 30)}


def test_grey_and_cmyk_conversions_are_recorded_and_summarised(make_shapes_dataset):
    source = make_shapes_dataset()
    Image.new("L", (8, 8), 90).save(source.image_dir / "circle/train_0.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(source.image_dir / "circle/train_1.jpg")
    source.split_file.write_text(source.split_file.read_text().replace("circle/train_1.png", "circle/train_1.jpg"))

    index = build_dataset_index(read_dataset(source), source.image_dir)
    rows = {row["relative_path"]: row for row in index.iter_rows(named=True)}
    assert rows["circle/train_0.png"]["conversion"] == "L->RGB"
    assert rows["circle/train_1.jpg"]["conversion"] == "CMYK->RGB"
    assert conversion_summary(index) == {"conversions": {"CMYK->RGB": 1, "L->RGB": 1}, "decode_warnings": {}}


def test_a_decompression_bomb_warning_is_accepted_and_recorded_with_its_size(make_shapes_dataset, monkeypatch):
    source = make_shapes_dataset()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(source.image_dir / "square/test_0.png")
    # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that: 256 pixels sit between 150 and 300, as a
    # 12000x12000 image sits between PIL's default 89.5 and 179 million.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)

    index = build_dataset_index(read_dataset(source), source.image_dir)
    rows = {row["relative_path"]: row for row in index.iter_rows(named=True)}
    big = rows["square/test_0.png"]
    assert (big["decodes"], big["image_width"], big["image_height"]) == (True, 16, 16)
    assert big["decode_warning"] == \
        "DecompressionBombWarning: 16x16 = 256 pixels, over PIL's limit of 150; decoded anyway"
    assert rows["square/test_1.png"]["decode_warning"] is None
    assert conversion_summary(index)["decode_warnings"] == {"square/test_0.png": big["decode_warning"]}

    Image.new("RGB", (18, 18)).save(source.image_dir / "square/test_1.png")  # 324 > 300: refused, as before
    refused = _index_rows(source)["square/test_1.png"]
    assert (refused["decodes"], refused["decode_warning"]) == (False, None)
    assert "DecompressionBombError" in refused["decode_error"]


def test_a_class_name_with_a_lone_surrogate_is_refused_naming_the_row(tmp_path):
    """JSON allows "\\ud800"; Parquet and DuckDB do not: refused at reading, naming file, split, row and field."""
    import json

    from models.data.datasets import DatasetFormatError, read_coop_split

    (tmp_path / "images").mkdir()
    split = {"train": [["a.png", 0, "cat"], ["b.png", 1, "bad\ud800name"]], "val": [], "test": []}
    (tmp_path / "split.json").write_text(json.dumps(split))  # json.dumps escapes it as \ud800
    with pytest.raises(DatasetFormatError, match=r"split.json: train\[1\]: classname is not valid UTF-8"):
        read_coop_split(tmp_path / "split.json", tmp_path / "images")


def test_a_class_folder_whose_name_is_not_utf8_is_refused(tmp_path):
    import os

    from models.data.datasets import DatasetFormatError, read_image_folder

    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    os.mkdir(os.fsencode(images) + b"/caf\xe9")  # Latin-1 bytes: not UTF-8
    for folder in (images / "cat", Path(os.fsdecode(os.fsencode(images) + b"/caf\xe9"))):
        for index in range(3):
            (folder / f"{index}.png").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match="class folder: the folder name is not valid UTF-8") as raised:
        read_image_folder(images, seed=1)
    assert str(images) in str(raised.value)
    str(raised.value).encode("utf-8")  # the message itself prints


def test_the_index_preview_shows_no_nan_for_a_missing_decode_error_and_no_thumbnail_bytes():
    from pipelines.assets.curation import index_preview

    index = pl.DataFrame({"relative_path": ["a.png", "b.png"], "decode_error": [None, "truncated"],
                          "thumbnail": [b"\x00\x01", b"\x02\x03"]})
    preview = index_preview(index)
    assert "nan" not in preview and "truncated" in preview and "thumbnail" not in preview
