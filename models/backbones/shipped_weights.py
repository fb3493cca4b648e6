"""Weights shipped in the catalog instead of pretrained on every fresh run (tiny-clip, the tiny diffusion model).

A shipped folder is what the model's own library reloads it from (open_clip's `local-dir:`, diffusers'
`from_pretrained`) plus `training_summary.json` (recipe, per-epoch losses, seconds). `install_shipped_folder` copies
it into the workspace only when the weights' SHA-256 is the one the catalog states and the architecture fits the
catalog's; a missing, changed, truncated or Git-LFS-pointer file stops it with the file's name, and the workspace is
left as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.atomic import atomic_directory
from models.provenance import sha256_file

SUMMARY_FILENAME = "training_summary.json"


class ShippedWeightsError(ValueError):
    """Shipped weights that are missing, altered or not made from the catalog's architecture."""


@dataclass(frozen=True)
class ShippedLayout:
    """The files of one model's shipped folder."""

    model: str  # for messages: "tiny-clip"
    catalog_field: str  # the world.yaml section that states the hash: "tiny_clip_weights"
    weights: str  # relative path of the file whose SHA-256 the catalog states
    files: tuple[str, ...]  # every relative path the folder must hold (weights and summary included)


def install_shipped_folder(source_dir: Path, layout: ShippedLayout, expected_sha256: str, output_dir: Path,
                           check_architecture: Callable[[Path], None] | None = None) -> dict:
    """Copy `layout.files` from `source_dir` to `output_dir` (atomically) once the weights' hash is `expected_sha256`
    and `check_architecture(source_dir)` (raising ShippedWeightsError) accepts the folder; returns the training
    summary, whose `epoch_losses` and `seconds` are checked to be there."""
    source_dir = Path(source_dir)
    for relative in layout.files:
        if not (source_dir / relative).is_file():
            raise ShippedWeightsError(f"shipped {layout.model} file missing: {source_dir / relative}")
    found = sha256_file(source_dir / layout.weights)
    if found != expected_sha256:
        raise ShippedWeightsError(
            f"{source_dir / layout.weights} has SHA-256 {found}, but the catalog expects {expected_sha256} "
            f"(world.yaml {layout.catalog_field}.weights_sha256): the file was altered or not fetched (Git LFS?); "
            "restore it, or pretrain with `promptlab run --retrain-world`")
    if check_architecture is not None:
        check_architecture(source_dir)
    summary_path = source_dir / SUMMARY_FILENAME
    for field_name in ("epoch_losses", "seconds"):  # what the assets report: refused by name when absent
        read_json_field(summary_path, field_name)
    summary = json.loads(summary_path.read_text())
    with atomic_directory(output_dir) as staging:
        for relative in layout.files:
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source_dir / relative, staging / relative)
    return summary


def read_json_field(path: Path, field_name: str):
    """One field of a shipped JSON file; a file that is not JSON or lacks the field is refused by name."""
    try:
        return json.loads(Path(path).read_text())[field_name]
    except (ValueError, KeyError, TypeError) as error:
        raise ShippedWeightsError(f"{path}: not a JSON object with a {field_name!r} field ({error})") from error
