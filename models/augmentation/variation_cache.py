"""On-disk cache of generated variations, keyed by the generator's provenance, the seed and the source image.

Generating is the expensive part of DiffTPT (63 diffusion samples per test image); the same test image with the
same seed and generator gives the same variations, so they are made once and shared by every run that needs them
(TPT and DiffTPT from several starting prompts, reruns). Layout:

    <cache_dir>/<generator name>-<provenance key>/provenance.json
    <cache_dir>/<generator name>-<provenance key>/<sha[:2]>/<sha>-s<seed>-n<count>/<k>.png

An image's folder is written whole or not at all (models.atomic), so an interrupted run leaves no partial entry.
PNG keeps the pixels exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from models.atomic import atomic_directory
from models.augmentation.generation import VariationGenerator
from models.provenance import stable_hash


def generator_cache_dir(cache_dir: Path, generator: VariationGenerator) -> Path:
    provenance = generator.provenance.as_dict()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", str(provenance.get("generator", "generator")))[:40]
    return Path(cache_dir) / f"{readable}-{stable_hash(provenance, length=16)}"


def cached_variations(generator: VariationGenerator, cache_dir: Path | None, images: Sequence[Image.Image],
                      content_hashes: Sequence[str], seeds: Sequence[int],
                      num_variations: int) -> list[list[Image.Image]]:
    """num_variations variations per image (in order), read from the cache or generated and stored."""
    if not (len(images) == len(content_hashes) == len(seeds)):
        raise ValueError(f"{len(images)} images, {len(content_hashes)} content hashes and {len(seeds)} seeds")
    if cache_dir is None:
        return _checked(generator.generate(list(images), list(seeds), num_variations), len(images), num_variations)
    root = generator_cache_dir(cache_dir, generator)
    root.mkdir(parents=True, exist_ok=True)
    provenance_file = root / "provenance.json"
    if not provenance_file.exists():
        provenance_file.write_text(json.dumps(generator.provenance.as_dict(), indent=2, sort_keys=True) + "\n")
    folders = [root / digest[:2] / f"{digest}-s{seed}-n{num_variations}" for digest, seed in zip(content_hashes, seeds)]
    missing = [i for i, folder in enumerate(folders) if not (folder / f"{num_variations - 1}.png").is_file()]
    results: dict[int, list[Image.Image]] = {}
    if missing:
        made = _checked(generator.generate([images[i] for i in missing], [seeds[i] for i in missing],
                                           num_variations), len(missing), num_variations)
        for i, variations in zip(missing, made):
            with atomic_directory(folders[i]) as staging:
                for k, variation in enumerate(variations):
                    variation.save(staging / f"{k}.png", format="PNG")
            results[i] = variations
    for i, folder in enumerate(folders):
        if i not in results:
            loaded = []
            for k in range(num_variations):
                with Image.open(folder / f"{k}.png") as opened:
                    loaded.append(opened.convert("RGB"))
            results[i] = loaded
    return [results[i] for i in range(len(images))]


def _checked(made: list[list[Image.Image]], n_images: int, num_variations: int) -> list[list[Image.Image]]:
    if len(made) != n_images or any(len(v) != num_variations for v in made):
        counts = [len(v) for v in made]
        raise ValueError(f"the generator returned {counts} variations for {n_images} images; expected "
                         f"{num_variations} each")
    return made
