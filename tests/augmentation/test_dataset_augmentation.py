"""augment_with_diffusion through every generator kind: provenance rows, the kept rule, saved sizes, bad input."""

from __future__ import annotations

import hashlib

import polars as pl
import pytest
from PIL import Image

from diffusion_toys import EMBEDDED_ENTRY, EMBEDDED_SIZE, SD_OUTPUT_SIZE, coloured_images, sd_entry
from models.augmentation import (AUGMENTATION_COLUMNS, AugmentationSettings, augment_with_diffusion,
                                 generation_overrides)
from models.augmentation.generation import GENERATOR_KINDS, per_image_seed
from models.augmentation.generators import load_variation_generator
from models.catalog import AugmentationOptions
from models.data.index import DatasetFormatError, load_images


def content_hash(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def augment(generator, tiny_clip, images, output_dir, threshold=0.0, variations=2, seed=1):
    paths = [f"class{i % 2}/img{i}.png" for i in range(len(images))]
    return augment_with_diffusion(
        generator, tiny_clip.model, tiny_clip.preprocess_eval, images, paths, [i % 2 for i in range(len(images))],
        [content_hash(image) for image in images], AugmentationSettings(variations, threshold, seed), output_dir)


@pytest.fixture(scope="module", params=GENERATOR_KINDS)
def generator_and_size(request, embedded_ddpm_folder, sd_folders):
    """(generator, size of the few-shot images it augments): the SD kinds get 24 px sources for 32 px outputs."""
    if request.param == "embedded_img2img":
        return load_variation_generator(EMBEDDED_ENTRY, embedded_ddpm_folder), EMBEDDED_SIZE
    return load_variation_generator(sd_entry(request.param, sd_folders[request.param])), 24


def test_every_variation_gets_a_provenance_row(generator_and_size, tiny_clip, tmp_path):
    generator, size = generator_and_size
    images = coloured_images(3, size, seed=11)
    table = augment(generator, tiny_clip, images, tmp_path, variations=2, seed=7)
    assert table.schema == pl.Schema(AUGMENTATION_COLUMNS)
    assert table.height == 6
    assert table["variation"].to_list() == [0, 1] * 3
    assert table["seed"].to_list() == [per_image_seed(7, content_hash(image)) for image in images for _ in range(2)]
    provenance = generator.provenance
    for column in ("generator", "kind", "model_id", "weights_sha256", "num_inference_steps", "output_size",
                   "strength", "guidance_scale"):
        assert table[column].unique().to_list() == [getattr(provenance, column)], column
    filled = ["relative_path", "source_relative_path", "label", "similarity", "kept", "generator", "kind", "model_id",
              "weights_sha256", "num_inference_steps", "output_size"]
    assert table.select(filled).null_count().sum_horizontal().item() == 0
    assert table["similarity"].is_between(-1.0001, 1.0001).all()


def test_kept_images_are_saved_at_their_source_size(generator_and_size, tiny_clip, tmp_path):
    generator, size = generator_and_size
    table = augment(generator, tiny_clip, coloured_images(2, size, seed=12), tmp_path, threshold=-1.0)
    assert table["kept"].all()
    saved = sorted(path.name for path in (tmp_path / "images").iterdir())
    assert saved == sorted(table["relative_path"].to_list())
    for name in saved:
        with Image.open(tmp_path / "images" / name) as image:
            assert (image.mode, image.size) == ("RGB", (size, size))
    assert table["output_size"].unique().to_list() == [generator.provenance.output_size]


def test_the_threshold_decides_what_is_kept(generator_and_size, tiny_clip, tmp_path):
    generator, size = generator_and_size
    images = coloured_images(3, size, seed=13)
    everything = augment(generator, tiny_clip, images, tmp_path / "all", threshold=-1.0, variations=3)
    middle = float(everything["similarity"].median())
    some = augment(generator, tiny_clip, images, tmp_path / "some", threshold=middle, variations=3)
    assert some["similarity"].to_list() == everything["similarity"].to_list()  # same seeds, same variations
    assert some["kept"].to_list() == [value >= middle for value in some["similarity"].to_list()]
    kept = set(some.filter(pl.col("kept"))["relative_path"].to_list())
    assert {path.name for path in (tmp_path / "some" / "images").iterdir()} == kept
    nothing = augment(generator, tiny_clip, images, tmp_path / "none", threshold=1.01, variations=3)
    assert not nothing["kept"].any() and not any((tmp_path / "none" / "images").iterdir())


def test_a_run_repeats_itself_and_another_seed_changes_it(embedded_ddpm_folder, tiny_clip, tmp_path):
    generator = load_variation_generator(EMBEDDED_ENTRY, embedded_ddpm_folder)
    images = coloured_images(2, EMBEDDED_SIZE, seed=14)
    first = augment(generator, tiny_clip, images, tmp_path / "first", threshold=-1.0, seed=1)
    again = augment(generator, tiny_clip, images, tmp_path / "again", threshold=-1.0, seed=1)
    other = augment(generator, tiny_clip, images, tmp_path / "other", threshold=-1.0, seed=2)
    for name in first["relative_path"]:
        saved, resaved = (tmp_path / run / "images" / name for run in ("first", "again"))
        assert saved.read_bytes() == resaved.read_bytes()
    assert first["similarity"].to_list() == again["similarity"].to_list()
    assert first["seed"].to_list() != other["seed"].to_list()
    assert first["similarity"].to_list() != other["similarity"].to_list()


class WrongCount:
    """A generator that returns one variation too few for the last image."""

    def __init__(self, provenance):
        self.provenance = provenance

    def generate(self, images, seeds, num_variations):
        made = [[image.copy() for _ in range(num_variations)] for image in images]
        made[-1].pop()
        return made


def test_a_generator_returning_the_wrong_number_of_images_is_an_error(embedded_ddpm_folder, tiny_clip, tmp_path):
    provenance = load_variation_generator(EMBEDDED_ENTRY, embedded_ddpm_folder).provenance
    with pytest.raises(ValueError, match=r"generator 'embedded-ddpm' returned \[2, 1\] variations for 2 source "
                                         r"images; expected 2 for each"):
        augment(WrongCount(provenance), tiny_clip, coloured_images(2, EMBEDDED_SIZE, seed=15), tmp_path)


def test_inputs_must_line_up(embedded_ddpm_folder, tiny_clip, tmp_path):
    generator = load_variation_generator(EMBEDDED_ENTRY, embedded_ddpm_folder)
    images = coloured_images(2, EMBEDDED_SIZE, seed=16)
    settings = AugmentationSettings(2, 0.5, 1)
    with pytest.raises(ValueError, match="2 images, 2 paths, 2 labels and 1 content hashes"):
        augment_with_diffusion(generator, tiny_clip.model, tiny_clip.preprocess_eval, images, ["a.png", "b.png"],
                               [0, 1], ["x" * 64], settings, tmp_path)
    with pytest.raises(ValueError, match=r"without a content hash .*\['b.png'\]"):
        augment_with_diffusion(generator, tiny_clip.model, tiny_clip.preprocess_eval, images, ["a.png", "b.png"],
                               [0, 1], ["x" * 64, None], settings, tmp_path)


def test_an_image_that_does_not_decode_is_named(tmp_path):
    coloured_images(1, 8, seed=17)[0].save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetFormatError, match=f"{tmp_path / 'broken.png'}: cannot read image"):
        load_images(tmp_path, ["good.png", "broken.png"])


def test_the_experiment_options_set_the_embedded_generator_only():
    options = AugmentationOptions(variations_per_image=2, strength=0.3, similarity_threshold=0.5,
                                  num_inference_steps=7)
    assert generation_overrides("embedded_img2img", options) == {"strength": 0.3, "num_inference_steps": 7}
    assert generation_overrides("sd_image_variation", options) == {}
    assert generation_overrides("sd_img2img", options) == {}
    entry = EMBEDDED_ENTRY.overridden(generation_overrides("embedded_img2img", options), "grid[2]: augmentation")
    assert (entry.strength, entry.num_inference_steps, entry.name) == (0.3, 7, "embedded-ddpm")


def test_sd_outputs_of_another_size_are_resized_back(sd_folders, tiny_clip, tmp_path):
    generator = load_variation_generator(sd_entry("sd_image_variation", sd_folders["sd_image_variation"]))
    assert generator.provenance.output_size == SD_OUTPUT_SIZE
    table = augment(generator, tiny_clip, coloured_images(1, 40, seed=18), tmp_path, threshold=-1.0)
    with Image.open(tmp_path / "images" / table["relative_path"][0]) as image:
        assert image.size == (40, 40)
