"""Miniature dataset trees in the field's real on-disk layouts, for tests/data/test_layouts_*.py.

Every image is the same tiny encoded file (written as bytes, so that a 1000-folder ImageNet takes well under a
second). Nothing here calls models.data.layouts: the tests compare its readers with re-implementations of the
reference code.
"""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path

from PIL import Image

WNID_FILES = Path(__file__).resolve().parents[2] / "models" / "data" / "layouts"


@cache
def image_bytes(format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (120, 30, 200)).save(buffer, format=format)
    return buffer.getvalue()


def write_images(folder: Path, names: list[str] | tuple[str, ...], format: str = "JPEG") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = image_bytes(format)
    for name in names:
        (folder / name).write_bytes(data)


@cache
def wnid_list(file_name: str = "imagenet_wnids.txt") -> tuple[str, ...]:
    """A vendored wnid list, read as plain data (comment lines start with '#')."""
    lines = (WNID_FILES / file_name).read_text().splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))


@cache
def clip_names() -> tuple[str, ...]:
    import open_clip

    return tuple(open_clip.IMAGENET_CLASSNAMES)


def coop_like_names() -> tuple[str, ...]:
    """CLIP's list with the two entries where copies of CoOp's classnames.txt differ (EventCLIP's copy)."""
    names = list(clip_names())
    names[744], names[836] = "projectile", "sunglass"
    return tuple(names)


def write_classnames(path: Path, wnids: list[str] | tuple[str, ...], names: list[str] | tuple[str, ...]) -> None:
    path.write_text("".join(f"{wnid} {name}\n" for wnid, name in zip(wnids, names)))


def write_imagenet(root: Path, wnids: tuple[str, ...] | list[str], images_per_class: int = 1,
                   classnames: bool = True) -> Path:
    """CoOp's ImageNet: images/{train,val}/<wnid>/ and classnames.txt (CoOp-like names by sorted wnid)."""
    for split in ("train", "val"):
        for wnid in wnids:
            write_images(root / "images" / split / wnid,
                         [f"{wnid}_{split}_{number}.JPEG" for number in range(images_per_class)])
    if classnames:
        all_wnids = wnid_list()
        names = coop_like_names()
        write_classnames(root / "classnames.txt", all_wnids, names)
    return root


def write_split_file(path: Path, split: dict[str, list[tuple[str, int, str]]]) -> None:
    """As Dassl's write_json (indent 4) of OxfordPets.save_split's output."""
    path.write_text(json.dumps({key: [list(row) for row in rows] for key, rows in split.items()}, indent=4))
