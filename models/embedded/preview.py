"""A contact sheet of the embedded world: corpus pairs with their captions, then samples of each dataset."""

from __future__ import annotations

import json
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from models.embedded.benchmark import EMBEDDED_DATASET_NAMES, build_embedded_dataset
from models.embedded.corpus import caption_for, corpus_rng, render_concept, sample_concept


def write_contact_sheet(output_path: Path, seed: int = 0, samples_per_row: int = 10, corpus_rows: int = 2) -> Path:
    """Render ``corpus_rows`` rows of corpus pairs and one row of test images per dataset to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, list[tuple[Image.Image, str]]]] = []
    rng = corpus_rng(seed)
    for row_index in range(corpus_rows):
        pairs = []
        for _ in range(samples_per_row):
            concept = sample_concept(rng)
            image = render_concept(concept, rng)
            pairs.append((image, caption_for(concept, rng)))
        rows.append((f"corpus {row_index + 1}", pairs))

    with tempfile.TemporaryDirectory() as scratch:
        for name in EMBEDDED_DATASET_NAMES:
            split_file = build_embedded_dataset(name, Path(scratch) / name, seed, {"train": 1, "val": 1, "test": 2})
            test_rows = json.loads(split_file.read_text(encoding="utf-8"))["test"]
            picks = np.random.default_rng(seed).choice(len(test_rows), size=min(samples_per_row, len(test_rows)), replace=False)
            samples = []
            for pick in sorted(picks.tolist()):
                relative_path, _label, classname = test_rows[pick]
                with Image.open(split_file.parent / "images" / relative_path) as image:
                    samples.append((image.convert("RGB"), classname))
            rows.append((name, samples))

    figure, axes = plt.subplots(len(rows), samples_per_row, figsize=(1.6 * samples_per_row, 1.9 * len(rows)), squeeze=False)
    for row_axes, (row_name, samples) in zip(axes, rows):
        for column, axis in enumerate(row_axes):
            axis.set_axis_off()
            if column < len(samples):
                image, text = samples[column]
                axis.imshow(image, interpolation="nearest")
                axis.set_title("\n".join(textwrap.wrap(text, 24)), fontsize=6)
        row_axes[0].text(-0.15, 0.5, row_name, transform=row_axes[0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    figure.tight_layout()
    output_path = Path(output_path)
    figure.savefig(output_path, dpi=90)
    plt.close(figure)
    return output_path
