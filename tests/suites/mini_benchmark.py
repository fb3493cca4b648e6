"""A miniature of the field's benchmark on disk, in the real layouts, under one $PROMPTLAB_DATA folder: ImageNet with
all 1000 wnid folders (one image each in train and val) and its four shifts (V2's 1000 numbered folders, Sketch's
1000 wnid folders, A's and R's 200), CoOp split-file Caltech101, FGVC Aircraft's text files, and DomainBed's PACS.
Every image is distinct (seeded noise, 16 px), so the content-hash and near-duplicate checks see real data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

LAYOUTS = Path(__file__).resolve().parents[2] / "models" / "data" / "layouts"


def wnids(file_name: str = "imagenet_wnids.txt") -> list[str]:
    return [line for line in (LAYOUTS / file_name).read_text().splitlines() if line and not line.startswith("#")]


class ImageWriter:
    """Distinct small JPEG/PNG files from one seeded stream."""

    def __init__(self, seed: int = 0):
        self.random = np.random.default_rng(seed)

    def write(self, path: Path, format: str = "JPEG") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = self.random.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=format, quality=95)
        path.write_bytes(buffer.getvalue())


def write_classnames(path: Path, all_wnids: list[str]) -> None:
    import open_clip

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{wnid} {name}\n" for wnid, name in zip(all_wnids, open_clip.IMAGENET_CLASSNAMES)))


def write_mini_benchmark(data: Path) -> Path:
    images = ImageWriter()
    all_wnids = wnids()
    imagenet = data / "imagenet"
    for wnid in all_wnids:
        images.write(imagenet / "images" / "train" / wnid / f"{wnid}_1.JPEG")
        images.write(imagenet / "images" / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG")
    write_classnames(imagenet / "classnames.txt", all_wnids)
    v2 = data / "imagenetv2"
    for label in range(1000):
        images.write(v2 / "imagenetv2-matched-frequency-format-val" / str(label) / f"{label:04d}.jpeg")
    write_classnames(v2 / "classnames.txt", all_wnids)
    sketch = data / "imagenet-sketch"
    for wnid in all_wnids:
        images.write(sketch / "images" / wnid / "sketch_1.JPEG")
    write_classnames(sketch / "classnames.txt", all_wnids)
    for folder, subfolder, file_name in (("imagenet-adversarial", "imagenet-a", "imagenet_a_wnids.txt"),
                                         ("imagenet-rendition", "imagenet-r", "imagenet_r_wnids.txt")):
        for wnid in wnids(file_name):
            images.write(data / folder / subfolder / wnid / "image_1.jpg")
        (data / folder / subfolder / "README.txt").write_text("the dataset's own readme, not a class\n")
        write_classnames(data / folder / "classnames.txt", all_wnids)
    caltech = data / "caltech-101"
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(["accordion", "airplane", "anchor", "ant"]):
        for number, subset in enumerate(["train", "train", "val", "test", "test"], start=1):
            relative = f"{name}/image_{number:04d}.jpg"
            images.write(caltech / "101_ObjectCategories" / relative)
            split[subset].append([relative, label, name])
    (caltech / "split_zhou_Caltech101.json").write_text(json.dumps(split, indent=4))
    aircraft = data / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    (aircraft / "variants.txt").parent.mkdir(parents=True, exist_ok=True)
    (aircraft / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    for subset, count in (("train", 2), ("val", 1), ("test", 2)):
        lines = []
        for variant_number, variant in enumerate(variants):
            for number in range(count):
                image_id = f"{1000000 + len(lines) * 10 + variant_number + 100 * ['train', 'val', 'test'].index(subset)}"
                images.write(aircraft / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {variant}\n")
        (aircraft / f"images_variant_{subset}.txt").write_text("".join(lines))
    pacs = data / "PACS"
    for domain in ("art_painting", "cartoon", "photo", "sketch"):
        for name in ("dog", "elephant", "giraffe"):
            for number in range(10):  # 24 "in" and 6 "out" images per domain: 2-shot subsets with val
                images.write(pacs / domain / name / f"pic_{number:03d}.jpg")
    return data
