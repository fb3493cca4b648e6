"""The `test_time:` section of experiments.yaml: the shapes checked before its runs are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.catalog.validation import _field_error


def _check_test_time_shapes(path: Path, raw: Any) -> None:
    """The shapes parse_test_time (models/testtime/plan.py) reads without checking: each mode's settings a mapping
    and its diffusion_backbone a name; each run's mode and start strings. A list or a string there is refused naming
    the field, not met later as a TypeError."""
    if not isinstance(raw, dict):
        return  # parse_test_time refuses it, naming the section
    where = f"{path.name}: test_time"
    modes = raw.get("modes")
    for mode, settings in (modes.items() if isinstance(modes, dict) else ()):
        if settings is not None and not isinstance(settings, dict):
            raise _field_error(f"{where}.modes", str(mode), "a mapping of the mode's settings", settings)
        backbone = (settings or {}).get("diffusion_backbone")
        if backbone is not None and not isinstance(backbone, str):
            raise _field_error(f"{where}.modes.{mode}", "diffusion_backbone", "a diffusion backbone's name", backbone)
    runs = raw.get("runs")
    for index, entry in enumerate(runs if isinstance(runs, list) else ()):
        for text_field in ("mode", "start"):
            value = entry.get(text_field) if isinstance(entry, dict) else None
            if value is not None and not isinstance(value, str):
                raise _field_error(f"{where}.runs[{index}]", text_field, "a string", value)
