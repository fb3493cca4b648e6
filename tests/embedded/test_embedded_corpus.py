"""The procedural corpus: determinism, attribute coverage, truthful captions, faithful rendering, atomic writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models.embedded import corpus
from models.embedded.benchmark import EMBEDDED_DATASET_NAMES, embedded_classnames
from models.embedded.corpus import (
    BACKGROUNDS,
    COLOURS,
    DIGIT_WORDS,
    SHAPES,
    SIZES,
    STYLES,
    TEXTURES,
    Concept,
    caption_for,
    load_corpus,
    render_concept,
    sample_concept,
    write_corpus,
)

COVERAGE_PAIRS = 2000


@pytest.fixture(scope="module")
def coverage_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_dir = tmp_path_factory.mktemp("corpus") / "corpus"
    write_corpus(output_dir, COVERAGE_PAIRS, seed=3)
    return output_dir


def _words(caption: str) -> set[str]:
    return set(re.findall(r"[a-z]+", caption.lower()))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = write_corpus(tmp_path / "first", 40, seed=11)
    second = write_corpus(tmp_path / "second", 40, seed=11)
    other = write_corpus(tmp_path / "other", 40, seed=12)
    for file_name in ("images.npy", "captions.parquet", "corpus.json"):
        assert (first.output_dir / file_name).read_bytes() == (second.output_dir / file_name).read_bytes(), file_name
    assert (first.images_path).read_bytes() != (other.images_path).read_bytes()
    assert (first.captions_path).read_bytes() != (other.captions_path).read_bytes()


def test_files_have_the_published_shapes_and_columns(coverage_corpus: Path) -> None:
    images, captions = load_corpus(coverage_corpus)
    assert images.dtype == np.uint8 and images.shape == (COVERAGE_PAIRS, 32, 32, 3)
    assert len(captions) == COVERAGE_PAIRS and all(caption.strip() for caption in captions)
    table = pq.read_table(coverage_corpus / "captions.parquet")
    assert table.column_names == ["row", "caption", "family", "shape", "colour", "texture", "size", "background", "style"]
    assert table.column("row").to_pylist() == list(range(COVERAGE_PAIRS))
    # Not all images equal: position, size and colour jitter make every image different.
    assert len({image.tobytes() for image in images}) == COVERAGE_PAIRS


def test_every_attribute_value_appears_in_two_thousand_pairs(coverage_corpus: Path) -> None:
    table = pq.read_table(coverage_corpus / "captions.parquet").to_pydict()
    expected = {
        "shape": set(SHAPES) | set(DIGIT_WORDS),
        "colour": set(COLOURS),
        "texture": set(TEXTURES),
        "size": set(SIZES),
        "background": set(BACKGROUNDS),
        "style": set(STYLES),
    }
    for field_name, values in expected.items():
        assert set(table[field_name]) == values, field_name


def test_captions_name_true_attributes_and_never_false_ones(coverage_corpus: Path) -> None:
    table = pq.read_table(coverage_corpus / "captions.parquet").to_pydict()
    names_subject = names_colour = 0
    for row in range(COVERAGE_PAIRS):
        caption = table["caption"][row]
        words = _words(caption)
        shape, colour, texture = table["shape"][row], table["colour"][row], table["texture"][row]
        size, background = table["size"][row], table["background"][row]
        where = f"row {row}: {caption!r}"
        assert words & (set(SHAPES) | set(DIGIT_WORDS)) <= {shape}, where
        assert words & set(COLOURS) <= {colour, background}, where
        assert words & set(SIZES) <= {size}, where
        assert words & {"striped", "dotted", "checkered", "zigzag", "stripes", "dots"} <= {
            texture, {"striped": "stripes", "dotted": "dots"}.get(texture, texture)
        }, where
        if "gradient" in words:
            assert texture == "gradient", where
        if "background" in words:
            assert f"on a {background} background" in caption, where
        names_subject += shape in words
        names_colour += colour in words
    # Attributes are dropped at random, but the subject is almost always named and the colour often (colour is
    # named less than the shape so that it cannot stand in for it).
    assert names_subject / COVERAGE_PAIRS > 0.8
    assert names_colour / COVERAGE_PAIRS > 0.45


def test_benchmark_class_names_appear_in_the_captions(coverage_corpus: Path) -> None:
    _images, captions = load_corpus(coverage_corpus)
    text = "\n".join(caption.lower() for caption in captions)
    for name in EMBEDDED_DATASET_NAMES:
        for classname in embedded_classnames(name):
            for word in classname.split(" "):  # a compositional class ("blue oval") is taught word by word
                assert re.search(rf"\b{word}\b", text), f"{name}: {word!r} of {classname!r} never appears in a caption"
    assert "a photo of the digit" in text and "object" in text and "shape" in text


def test_sample_concept_respects_fixed_and_restricted_attributes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        concept = sample_concept(rng, shape="star", style=("photo", "cartoon"), background=("white", "grey"))
        assert concept.shape == "star" and concept.style in ("photo", "cartoon")
        assert concept.background in ("white", "grey")
    digits = [sample_concept(rng, shape=DIGIT_WORDS) for _ in range(50)]
    assert all(concept.is_digit and concept.texture == "plain" for concept in digits)
    sketches = [sample_concept(rng, style="sketch") for _ in range(50)]
    assert all(concept.texture == "plain" for concept in sketches)


def test_sample_concept_and_concept_reject_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="hue"):
        sample_concept(rng, hue="red")
    with pytest.raises(ValueError, match="colour 'mauve'"):
        sample_concept(rng, colour="mauve")
    with pytest.raises(ValueError, match="no valid concept"):
        sample_concept(rng, texture="striped", style="sketch")
    with pytest.raises(ValueError, match="Concept.shape"):
        Concept("blob", "red", "plain", "small", "white", "photo")
    with pytest.raises(ValueError, match="invisible"):
        Concept("circle", "black", "plain", "small", "black", "photo")


def _object_pixels(image: np.ndarray, background_value: float) -> np.ndarray:
    return np.abs(image.astype(np.float32) - background_value).sum(axis=2) > 60


def test_rendering_shows_the_colour_and_size_it_was_asked_for() -> None:
    rng = np.random.default_rng(5)
    areas = {}
    for size in SIZES:
        concept = Concept("square", "red", "plain", size, "white", "photo")
        image = np.asarray(render_concept(concept, rng, image_size=32))
        assert image.shape == (32, 32, 3)
        mask = _object_pixels(image, 245.0)
        areas[size] = int(mask.sum())
        mean_rgb = image[mask].mean(axis=0)
        assert mean_rgb[0] > 170 and mean_rgb[1] < 80 and mean_rgb[2] < 80, (size, mean_rgb)
    assert areas["small"] < areas["medium"] < areas["large"]


def test_sketch_is_an_outline_and_jitter_moves_the_object() -> None:
    filled = Concept("circle", "blue", "plain", "large", "white", "photo")
    outline = Concept("circle", "blue", "plain", "large", "white", "sketch")
    filled_area = _object_pixels(np.asarray(render_concept(filled, np.random.default_rng(1))), 245.0).sum()
    outline_area = _object_pixels(np.asarray(render_concept(outline, np.random.default_rng(1))), 245.0).sum()
    assert outline_area < 0.7 * filled_area
    rng = np.random.default_rng(2)
    first, second = (np.asarray(render_concept(filled, rng)) for _ in range(2))
    assert not np.array_equal(first, second)


def test_every_concept_renders_at_other_sizes() -> None:
    rng = np.random.default_rng(9)
    for shape in SHAPES + DIGIT_WORDS:
        for style in STYLES:
            concept = sample_concept(rng, shape=shape, style=style)
            image = render_concept(concept, rng, image_size=48)
            assert image.size == (48, 48) and image.mode == "RGB"
            assert np.asarray(image).std() > 5, f"{concept} rendered as a flat image"
    with pytest.raises(ValueError, match="image_size"):
        render_concept(concept, rng, image_size=4)


def test_caption_examples_read_like_english() -> None:
    rng = np.random.default_rng(4)
    concept = Concept("circle", "orange", "striped", "small", "black", "photo")
    captions = {caption_for(concept, rng) for _ in range(300)}
    assert all(not re.search(r"\ba [aeiou]", caption) for caption in captions), "article before a vowel"
    assert any("an orange" in caption for caption in captions)
    assert any("a photo of a" in caption for caption in captions)
    assert any(caption.endswith("with stripes") or "with stripes " in caption for caption in captions)


def test_load_corpus_names_the_missing_file(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", 5, seed=0)
    (tmp_path / "corpus" / "captions.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="captions.parquet"):
        load_corpus(tmp_path / "corpus")
    with pytest.raises(FileNotFoundError, match="images.npy"):
        load_corpus(tmp_path / "nowhere")


def test_crash_mid_write_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = write_corpus(tmp_path / "corpus", 6, seed=1)
    previous_bytes = previous.images_path.read_bytes()

    def failing_write(path: Path, *_args: object) -> None:
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(corpus, "_write_captions", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_corpus(tmp_path / "corpus", 6, seed=2)
    with pytest.raises(OSError, match="disk full"):
        write_corpus(tmp_path / "fresh", 6, seed=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus"]  # no staging leftovers, no "fresh"
    assert previous.images_path.read_bytes() == previous_bytes  # the earlier corpus is untouched
    assert sorted(path.name for path in (tmp_path / "corpus").iterdir()) == ["captions.parquet", "corpus.json", "images.npy"]


def test_families_differ_in_one_attribute_and_their_captions_name_it(tmp_path: Path) -> None:
    summary = write_corpus(tmp_path / "corpus", 400, seed=5, family_size=8)
    table = pq.read_table(summary.captions_path).to_pydict()
    families = corpus.load_corpus_families(summary.output_dir)
    assert families.tolist() == table["family"] and families.tolist() == sorted(families.tolist())
    assert len(set(families.tolist())) == 50  # consecutive rows, 8 to a family
    attributes = ("shape", "colour", "texture", "size", "background", "style")
    for family in range(50):
        rows = [row for row in range(400) if table["family"][row] == family]
        varying = [name for name in attributes if len({table[name][row] for row in rows}) > 1]
        # Members of a clashing value are redrawn freely, so rarely more differ; usually exactly one does.
        assert varying, f"family {family}: all members are the same concept"
        if len(varying) == 1 and varying[0] in ("shape", "colour"):
            for row in rows:
                assert table[varying[0]][row] in _words(table["caption"][row]), (family, table["caption"][row])
    with pytest.raises(ValueError, match="family_size"):
        write_corpus(tmp_path / "bad", 10, seed=0, family_size=0)


def test_corpus_without_family_column_reads_as_one_family_per_pair(tmp_path: Path) -> None:
    summary = write_corpus(tmp_path / "corpus", 12, seed=1)
    table = pq.read_table(summary.captions_path).drop(["family"])
    pq.write_table(table, summary.captions_path)
    assert corpus.load_corpus_families(summary.output_dir).tolist() == list(range(12))


def test_subject_captions_name_only_the_shape_or_digit(tmp_path: Path) -> None:
    summary = write_corpus(tmp_path / "corpus", 300, seed=2, family_size=4)
    table = pq.read_table(summary.captions_path).to_pydict()
    subjects = corpus.load_subject_captions(summary.output_dir)
    assert len(subjects) == 300
    for row, subject in enumerate(subjects):
        shape, texture = table["shape"][row], table["texture"][row]
        assert shape in _words(subject) and not _words(subject) & (set(COLOURS) - {"colour"}), (row, subject)
        if shape in DIGIT_WORDS:
            assert subject == f"the digit {shape}", row
        elif texture not in ("plain", "gradient"):
            assert texture in _words(subject), (row, subject)
    assert corpus.subject_caption(Concept("oval", "red", "plain", "small", "white", "photo")) == "an oval"
    assert corpus.subject_caption(Concept("star", "red", "dotted", "small", "white", "photo")) == "a dotted star"
