"""Tiny on-disk datasets (8x8 PNGs) in CoOp's layout for the data tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from models.data.datasets import DatasetSource

SHAPES_CLASSNAMES = ("circle", "square")
IMAGES_PER_SPLIT = {"train": 4, "val": 2, "test": 2}


def write_png(path: Path, color: tuple[int, int, int], size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")


def shapes_split_rows() -> dict[str, list[list]]:
    """split -> [relative_path, label, classname] rows; every image gets a distinct colour (distinct hash)."""
    return {
        split: [
            [f"{classname}/{split}_{number}.png", label, classname]
            for label, classname in enumerate(SHAPES_CLASSNAMES)
            for number in range(count)
        ]
        for split, count in IMAGES_PER_SPLIT.items()
    }


@pytest.fixture
def make_shapes_dataset(tmp_path: Path) -> Callable[..., DatasetSource]:
    """Factory: writes the images and a split file (optionally edited by ``edit_rows``) under tmp_path."""

    def make(edit_rows: Callable[[dict[str, list[list]]], None] | None = None) -> DatasetSource:
        root = tmp_path / "Shapes"
        rows = shapes_split_rows()
        colour_number = 0
        for split_rows in rows.values():
            for relative_path, _, _ in split_rows:
                colour_number += 1
                write_png(root / "images" / relative_path, (colour_number * 7 % 256, colour_number * 13 % 256, 90))
        if edit_rows is not None:
            edit_rows(rows)
        (root / "split_zhou_Shapes.json").write_text(json.dumps(rows))
        return DatasetSource(name="Shapes", root=root)

    return make


@pytest.fixture
def png_writer() -> Callable[..., None]:
    """``write_png`` as a fixture, so test modules need not import conftest (ambiguous across test dirs)."""
    return write_png
