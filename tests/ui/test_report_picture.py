"""The README's picture of the report is what the report looks like now: rendered here from the demo grid's runs
(tests/ui/report_picture_runs/) and compared with docs/images/report.png. A change of the report's look or numbers
fails this test until the picture is re-rendered (PROMPTLAB_UPDATE_PICTURES=1 writes it)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from report_picture import PICTURE, RUNS, build_picture_report, photograph

from models.provenance import PACKAGE_ROOT

pytestmark = pytest.mark.ui


def test_the_readmes_picture_of_the_report_is_rendered_from_the_demo_runs(browser, tmp_path):
    html = build_picture_report(RUNS, tmp_path)
    text = html.read_text()
    assert "Shapes" in text and "zero-shot" in text.lower()
    rendered = tmp_path / "report.png"
    photograph(browser, html, rendered)
    if os.environ.get("PROMPTLAB_UPDATE_PICTURES") == "1":
        PICTURE.parent.mkdir(parents=True, exist_ok=True)
        PICTURE.write_bytes(rendered.read_bytes())
    new = np.asarray(Image.open(rendered).convert("L"), dtype=np.float64)
    assert new.std() > 10, "the rendered picture is blank"
    assert PICTURE.exists(), f"no {PICTURE.relative_to(PACKAGE_ROOT)}: render it with PROMPTLAB_UPDATE_PICTURES=1"
    old = np.asarray(Image.open(PICTURE).convert("L"), dtype=np.float64)
    # Chromium renders the same page to the same pixels on one machine image (CI's is this one); a changed digit
    # moves a few dozen pixels by more than 32 grey levels, a handful is allowed for anti-aliasing elsewhere.
    changed = int(np.sum(np.abs(old - new) > 32)) if old.shape == new.shape else None
    same = changed is not None and changed <= 8
    assert same, (f"{changed} pixels changed: {PICTURE.relative_to(PACKAGE_ROOT)} no longer shows the report as it renders now: re-render it "
                  "with PROMPTLAB_UPDATE_PICTURES=1 .venv/bin/python -m pytest -m ui tests/ui/test_report_picture.py")
    assert "docs/images/report.png" in (PACKAGE_ROOT / "README.md").read_text()
