"""What the throughput benchmark runs on: the embedded backbone and embedded images, from the workspace or made here.

Backbone: the pipeline's pretrained tiny-clip (workspace/world/tiny-clip, written by the `tiny_clip_backbone`
asset) when present; otherwise the same architecture (assets_catalog/model_configs/tiny-clip.json) with seeded
random weights, saved in open_clip's local-dir layout so it loads through the one backbone loader. Throughput does
not depend on the weights' values; where they came from is recorded with every figure. Another open_clip
architecture (e.g. ViT-B-16, to see how the figures scale to a real CLIP's towers) is always built with seeded
random weights.

Images: the first K training images per class of an embedded dataset in the workspace (workspace/datasets/<name>)
when present; otherwise the dataset is generated into a scratch folder with `models.embedded`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from models.atomic import atomic_directory
from models.backbones.loader import BackboneSpec
from models.backbones.tiny_clip import CONFIG_FILENAME, WEIGHTS_FILENAME, register_embedded_model_configs
from models.embedded.benchmark import build_embedded_dataset, suggested_templates
from models.provenance import sha256_file
from models.workspace import Workspace

BACKBONE_NAME = "tiny-clip"


@dataclass(frozen=True)
class BenchBackbone:
    name: str  # the open_clip architecture name
    directory: str  # an open_clip local-dir folder
    weights_source: str

    def spec(self) -> BackboneSpec:
        return BackboneSpec(name=self.name, source="local_dir", model_name=self.name, path=self.directory)


@dataclass(frozen=True)
class BenchImages:
    dataset: str
    source: str
    image_dir: str
    relative_paths: list[str]
    content_hashes: list[str]
    labels: list[int]
    classnames: list[str]
    templates: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_backbone(workspace: Workspace, scratch: Path, seed: int = 0,
                     architecture: str = BACKBONE_NAME) -> BenchBackbone:
    directory = workspace.tiny_clip_dir
    if architecture == BACKBONE_NAME:
        if (directory / CONFIG_FILENAME).is_file() and (directory / WEIGHTS_FILENAME).is_file():
            return BenchBackbone(BACKBONE_NAME, str(directory), f"workspace pretrained ({directory})")
        why = "no pretrained tiny-clip in the workspace"
    else:
        why = "the workspace pretrains tiny-clip only"
    directory = Path(scratch) / f"{architecture}-random"
    write_random_clip(directory, seed, architecture)
    return BenchBackbone(architecture, str(directory), f"random (seed {seed}; {why})")


def write_random_clip(directory: Path, seed: int = 0, architecture: str = BACKBONE_NAME) -> Path:
    """An open_clip architecture (by default the catalog's tiny-clip) with seeded random weights, as an open_clip
    local-dir folder."""
    register_embedded_model_configs()
    if open_clip.get_model_config(architecture) is None:
        raise ValueError(f"unknown open_clip architecture {architecture!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(architecture, pretrained=None)
    config = {"model_cfg": open_clip.get_model_config(architecture),
              "preprocess_cfg": dict(model.visual.preprocess_cfg)}  # open_clip's defaults for this architecture
    with atomic_directory(Path(directory)) as staging:
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILENAME), metadata={"format": "pt"})
        (staging / CONFIG_FILENAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    return Path(directory)


def resolve_images(workspace: Workspace, scratch: Path, dataset: str, images_per_class: int,
                   templates: list[str] | None = None) -> BenchImages:
    """The first `images_per_class` training images of each class (file order), with labels and hashes."""
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be at least 1, got {images_per_class}")
    directory = workspace.embedded_dataset_dir(dataset)
    split_file = directory / f"split_zhou_{dataset}.json"
    source = f"workspace ({directory})"
    if not split_file.is_file():
        directory = Path(scratch) / dataset
        split_file = build_embedded_dataset(dataset, directory, seed=0,
                                            images_per_class={"train": images_per_class, "val": 1, "test": 1})
        source = "generated (models.embedded, seed 0)"
    rows = json.loads(split_file.read_text())["train"]
    info_file = directory / "embedded_dataset.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    classnames = list(info.get("classnames") or [])
    if not classnames:
        by_label = {int(label): name for _, label, name in rows}
        classnames = [by_label[label] for label in sorted(by_label)]
    chosen, per_class = [], {}
    for relative_path, label, _ in rows:
        if per_class.get(label, 0) < images_per_class:
            per_class[label] = per_class.get(label, 0) + 1
            chosen.append((relative_path, int(label)))
    image_dir = directory / "images"
    if templates is None:
        templates = [info.get("template") or suggested_templates()[dataset]]
    return BenchImages(
        dataset=dataset,
        source=source,
        image_dir=str(image_dir),
        relative_paths=[path for path, _ in chosen],
        content_hashes=[sha256_file(image_dir / path) for path, _ in chosen],
        labels=[label for _, label in chosen],
        classnames=classnames,
        templates=list(templates),
    )
