"""world.yaml: the embedded world's recipe (its caption corpus, the tiny CLIP's and the tiny diffusion model's
pretraining, the benchmark's images per split) and the shipped weights' folders and hashes, each section checked
against the code that consumes it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from models.catalog.validation import _check_dataclass_fields, _check_fields, _field_error, _integer_value, _read_yaml


WORLD_SECTIONS = ("corpus", "tiny_clip", "tiny_clip_weights", "diffusion", "diffusion_weights", "benchmark")
SHIPPED_WEIGHTS_SECTIONS = ("tiny_clip_weights", "diffusion_weights")  # models/backbones/shipped_weights.py
BENCHMARK_SPLITS = ("train", "val", "test")


def parse_world(path: Path) -> dict[str, Any]:
    """world.yaml, checked against what consumes each section: the corpus against write_corpus's arguments, the
    recipes against ClipPretrainConfig and DiffusionPretrainConfig, the benchmark's seed and images per split, and
    the shipped weights' folder and SHA-256; a typo fails here, naming the file, section and field."""
    import inspect

    from models.backbones.tiny_clip import ClipPretrainConfig
    from models.backbones.tiny_diffusion import DiffusionPretrainConfig
    from models.embedded.corpus import write_corpus

    world = _read_yaml(path)
    _check_fields(path.name, world, WORLD_SECTIONS, required=("corpus", "tiny_clip", "diffusion", "benchmark"))
    corpus_arguments = {name: parameter for name, parameter in inspect.signature(write_corpus).parameters.items()
                        if name != "output_dir"}
    required = tuple(name for name, parameter in corpus_arguments.items() if parameter.default is inspect.Parameter.empty)
    _check_fields(f"{path.name}: corpus", world["corpus"], tuple(corpus_arguments), required)
    for name, value in world["corpus"].items():
        _integer_value(f"{path.name}: corpus", name, value)
    _check_dataclass_fields(f"{path.name}: tiny_clip", world["tiny_clip"], ClipPretrainConfig)
    _check_dataclass_fields(f"{path.name}: diffusion", world["diffusion"], DiffusionPretrainConfig)
    where = f"{path.name}: benchmark"
    benchmark = world["benchmark"]
    _check_fields(where, benchmark, ("seed", "images_per_class"), required=("seed", "images_per_class"))
    _integer_value(where, "seed", benchmark["seed"])
    _check_fields(f"{where}: images_per_class", benchmark["images_per_class"], BENCHMARK_SPLITS, BENCHMARK_SPLITS)
    for split, count in benchmark["images_per_class"].items():
        _integer_value(where, f"images_per_class.{split}", count, 1)
    for section in SHIPPED_WEIGHTS_SECTIONS:
        if world.get(section) is None:
            continue
        where = f"{path.name}: {section}"
        shipped = world[section]
        _check_fields(where, shipped, ("folder", "weights_sha256"), required=("folder", "weights_sha256"))
        if not isinstance(shipped["folder"], str):
            raise _field_error(where, "folder", "a folder relative to the catalog", shipped["folder"])
        if not isinstance(shipped["weights_sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", shipped["weights_sha256"]):
            raise _field_error(where, "weights_sha256", "64 lowercase hexadecimal digits", shipped["weights_sha256"])
    return world
