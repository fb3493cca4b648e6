"""The embedded world: a procedural image-caption corpus and a small benchmark the project generates itself."""

from models.embedded.benchmark import (
    EMBEDDED_DATASET_NAMES,
    build_embedded_benchmark,
    build_embedded_dataset,
    embedded_classnames,
    suggested_templates,
)
from models.embedded.corpus import (
    BACKGROUNDS,
    COLOURS,
    DIGIT_WORDS,
    SHAPES,
    SIZES,
    STYLES,
    TEXTURES,
    Concept,
    CorpusSummary,
    caption_for,
    load_corpus,
    render_concept,
    sample_concept,
    write_corpus,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DIGIT_WORDS",
    "EMBEDDED_DATASET_NAMES",
    "SHAPES",
    "SIZES",
    "STYLES",
    "TEXTURES",
    "Concept",
    "CorpusSummary",
    "build_embedded_benchmark",
    "build_embedded_dataset",
    "caption_for",
    "embedded_classnames",
    "load_corpus",
    "render_concept",
    "sample_concept",
    "suggested_templates",
    "write_corpus",
]
