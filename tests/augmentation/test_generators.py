"""The three VariationGenerators built by load_variation_generator: seeding, sizes, provenance, loading errors."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from diffusion_toys import (EMBEDDED_ENTRY, EMBEDDED_SIZE, FAKE_COMMIT, SD_OUTPUT_SIZE, coloured_images,
                            place_in_hub_cache, sd_entry)
from models.augmentation.generation import GENERATOR_KINDS, GenerationProvenance
from models.augmentation.generators import (DiffusionBackboneUnavailableError, EmbeddedImg2ImgGenerator,
                                            StableDiffusionImageVariationGenerator, StableDiffusionImg2ImgGenerator,
                                            load_variation_generator)
from models.catalog import DiffusionBackboneEntry
from models.provenance import sha256_file

SD_KINDS = ("sd_image_variation", "sd_img2img")


def as_bytes(variations: list[list[Image.Image]]) -> list[list[bytes]]:
    return [[image.tobytes() for image in per_source] for per_source in variations]


@pytest.fixture(scope="module")
def embedded(embedded_ddpm_folder):
    return load_variation_generator(EMBEDDED_ENTRY, embedded_ddpm_folder)


@pytest.fixture(scope="module", params=GENERATOR_KINDS)
def any_generator(request, embedded_ddpm_folder, sd_folders):
    """(generator, source size) of each kind."""
    if request.param == "embedded_img2img":
        return load_variation_generator(EMBEDDED_ENTRY, embedded_ddpm_folder), EMBEDDED_SIZE
    return load_variation_generator(sd_entry(request.param, sd_folders[request.param])), 24


def test_the_factory_builds_each_kind_with_its_provenance(embedded_ddpm_folder, sd_folders):
    embedded = load_variation_generator(EMBEDDED_ENTRY, embedded_ddpm_folder)
    assert isinstance(embedded, EmbeddedImg2ImgGenerator)
    assert embedded.provenance == GenerationProvenance(
        generator="embedded-ddpm", kind="embedded_img2img", model_id="embedded:tiny-diffusion",
        weights_sha256=sha256_file(embedded_ddpm_folder / "unet" / "diffusion_pytorch_model.safetensors"),
        num_inference_steps=10, strength=0.6, guidance_scale=None, output_size=EMBEDDED_SIZE, dtype="float32",
        scheduler="DDIMScheduler")
    variation = load_variation_generator(sd_entry("sd_image_variation", sd_folders["sd_image_variation"]))
    img2img = load_variation_generator(sd_entry("sd_img2img", sd_folders["sd_img2img"]))
    assert isinstance(variation, StableDiffusionImageVariationGenerator)
    assert isinstance(img2img, StableDiffusionImg2ImgGenerator)
    assert variation.pipeline.safety_checker is None and img2img.pipeline.safety_checker is None
    for generator, kind in ((variation, "sd_image_variation"), (img2img, "sd_img2img")):
        provenance = generator.provenance
        assert provenance.kind == kind and provenance.generator == f"tiny-{kind}"
        assert provenance.model_id == str(sd_folders[kind])
        assert provenance.weights_sha256 == sha256_file(sd_folders[kind] / "unet" /
                                                        "diffusion_pytorch_model.safetensors")
        assert (provenance.output_size, provenance.guidance_scale, provenance.dtype) == (SD_OUTPUT_SIZE, 3.0,
                                                                                          "float32")
    assert variation.provenance.strength is None and variation.provenance.prompt is None
    assert (img2img.provenance.strength, img2img.provenance.prompt, img2img.provenance.num_inference_steps) == (
        0.5, "a photo", 4)


def test_outputs_are_rgb_images_of_the_output_size(any_generator):
    generator, source_size = any_generator
    variations = generator.generate(coloured_images(2, source_size, seed=1), [5, 6], 3)
    assert [len(per_source) for per_source in variations] == [3, 3]
    size = generator.provenance.output_size
    assert {(image.mode, image.size) for per_source in variations for image in per_source} == {("RGB", (size, size))}


def test_same_seed_gives_the_same_bytes_and_another_seed_other_bytes(any_generator):
    generator, source_size = any_generator
    images = coloured_images(2, source_size, seed=2)
    first = as_bytes(generator.generate(images, [11, 12], 2))
    assert as_bytes(generator.generate(images, [11, 12], 2)) == first
    other = as_bytes(generator.generate(images, [13, 12], 2))
    assert other[0] != first[0] and other[1] == first[1]  # only the reseeded image changes
    assert first[0][0] != first[0][1]  # an image's variations differ from one another


def test_an_image_gets_the_same_variations_alone_or_with_others(any_generator):
    generator, source_size = any_generator
    a, b, c = coloured_images(3, source_size, seed=3)
    alone = as_bytes(generator.generate([a], [21], 2))
    together = as_bytes(generator.generate([b, a, c], [22, 21, 23], 2))
    assert together[1] == alone[0]


def test_embedded_batches_of_fixed_shape_match_one_image_at_a_time(embedded_ddpm_folder):
    generator = load_variation_generator(EMBEDDED_ENTRY, embedded_ddpm_folder)
    generator.batch_size = 4  # 3 images x 3 variations: batches of 4, 4 and 1 padded to 4
    images = coloured_images(3, EMBEDDED_SIZE, seed=4)
    together = as_bytes(generator.generate(images, [1, 2, 3], 3))
    assert together == [as_bytes(generator.generate([image], [seed], 3))[0] for image, seed in zip(images, [1, 2, 3])]


def test_embedded_strength_zero_returns_the_sources(embedded_ddpm_folder):
    generator = load_variation_generator(dataclasses.replace(EMBEDDED_ENTRY, strength=0.0), embedded_ddpm_folder)
    image = coloured_images(1, EMBEDDED_SIZE, seed=5)[0]
    assert as_bytes(generator.generate([image], [0], 2)) == [[image.tobytes()] * 2]


def test_embedded_refuses_sources_of_another_size(embedded, embedded_ddpm_folder):
    images = [coloured_images(1, EMBEDDED_SIZE, seed=6)[0], coloured_images(1, 24, seed=6)[0]]
    with pytest.raises(ValueError, match=rf"source image 1 is 24x24 pixels, but the embedded diffusion model "
                                         rf"\({embedded_ddpm_folder}\) generates {EMBEDDED_SIZE}x{EMBEDDED_SIZE}"):
        embedded.generate(images, [0, 1], 1)


def test_img2img_resizes_the_source_to_the_output_size(sd_folders):
    generator = load_variation_generator(sd_entry("sd_img2img", sd_folders["sd_img2img"]))
    image = coloured_images(1, 20, seed=7)[0]
    resized = image.resize((SD_OUTPUT_SIZE, SD_OUTPUT_SIZE), Image.Resampling.BICUBIC)
    assert as_bytes(generator.generate([image], [3], 2)) == as_bytes(generator.generate([resized], [3], 2))


def test_a_seed_per_image_is_required(embedded):
    with pytest.raises(ValueError, match="2 source images but 1 seeds"):
        embedded.generate(coloured_images(2, EMBEDDED_SIZE, seed=8), [1], 1)


def test_hub_entries_load_from_the_local_cache_only(sd_folders, tmp_path):
    cache = place_in_hub_cache(tmp_path / "hf-cache", "tiny-org/sd-image-variations", "v2.0",
                               sd_folders["sd_image_variation"])
    entry = DiffusionBackboneEntry(name="hub-variations", source="hub", kind="sd_image_variation",
                                   model_id="tiny-org/sd-image-variations", revision="v2.0", cache_dir=str(cache),
                                   num_inference_steps=2, guidance_scale=3.0, output_size=SD_OUTPUT_SIZE)
    generator = load_variation_generator(entry)
    assert generator.provenance.model_id == "tiny-org/sd-image-variations@v2.0"
    snapshot = cache / "models--tiny-org--sd-image-variations" / "snapshots" / FAKE_COMMIT
    assert generator.provenance.weights_sha256 == sha256_file(snapshot / "unet" / "diffusion_pytorch_model.safetensors")
    local = load_variation_generator(sd_entry("sd_image_variation", sd_folders["sd_image_variation"]))
    image = coloured_images(1, 24, seed=9)
    assert as_bytes(generator.generate(image, [4], 2)) == as_bytes(local.generate(image, [4], 2))


def test_a_hub_model_missing_from_the_cache_names_id_revision_and_folder(tmp_path):
    entry = DiffusionBackboneEntry(name="sd-image-variations", source="hub", kind="sd_image_variation",
                                   model_id="lambdalabs/sd-image-variations-diffusers", revision="v2.0",
                                   cache_dir=str(tmp_path / "empty-cache"), num_inference_steps=50,
                                   guidance_scale=3.0, output_size=512)
    with pytest.raises(DiffusionBackboneUnavailableError) as raised:
        load_variation_generator(entry)
    message = str(raised.value)
    for expected in ("'lambdalabs/sd-image-variations-diffusers'", "revision 'v2.0'", str(tmp_path / "empty-cache"),
                     "models--lambdalabs--sd-image-variations-diffusers", "never downloads", "hf download",
                     "source: local_dir"):
        assert expected in message, expected


def test_an_incomplete_hub_snapshot_names_the_missing_component(sd_folders, tmp_path):
    cache = place_in_hub_cache(tmp_path / "hf-cache", "tiny-org/img2img", "main", sd_folders["sd_img2img"])
    snapshot = cache / "models--tiny-org--img2img" / "snapshots" / FAKE_COMMIT
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    entry = dataclasses.replace(sd_entry("sd_img2img", sd_folders["sd_img2img"]), source="hub", path=None,
                                model_id="tiny-org/img2img", cache_dir=str(cache))
    with pytest.raises(DiffusionBackboneUnavailableError, match=r"'tiny-org/img2img' at revision 'main' .* is "
                                                                r"incomplete; missing: \['unet/diffusion_pytorch"):
        load_variation_generator(entry)


def test_a_local_folder_must_exist_and_be_complete(sd_folders, tmp_path):
    missing = sd_entry("sd_image_variation", tmp_path / "nowhere")
    with pytest.raises(DiffusionBackboneUnavailableError, match=f"model folder not found: {tmp_path / 'nowhere'}"):
        load_variation_generator(missing)
    import shutil

    partial = shutil.copytree(sd_folders["sd_image_variation"], tmp_path / "partial")
    shutil.rmtree(partial / "vae")
    with pytest.raises(DiffusionBackboneUnavailableError, match=rf"{partial} is incomplete; missing: \['vae/'\]"):
        load_variation_generator(sd_entry("sd_image_variation", partial))


def test_the_embedded_model_must_be_pretrained_first(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not pretrained yet .* materialize the tiny_diffusion_model asset"):
        load_variation_generator(EMBEDDED_ENTRY, tmp_path / "world" / "tiny-diffusion")


def test_an_output_size_the_vae_cannot_make_is_refused(sd_folders):
    # catalog entries are validated when parsed (test_diffusion_catalog.py); this one is built by hand
    entry = sd_entry("sd_image_variation", sd_folders["sd_image_variation"], output_size=36)
    with pytest.raises(ValueError, match=r"'tiny-sd_image_variation': output_size 36 must be a multiple of 8"):
        load_variation_generator(entry)


def test_float16_is_refused_on_cpu(sd_folders, embedded_ddpm_folder):
    with pytest.raises(ValueError, match="dtype float16 is meant for CUDA.*Use float32"):
        load_variation_generator(sd_entry("sd_img2img", sd_folders["sd_img2img"]), device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="dtype float16 is meant for CUDA"):
        load_variation_generator(dataclasses.replace(EMBEDDED_ENTRY, dtype="float16"), embedded_ddpm_folder)


def test_bfloat16_runs_on_cpu_and_is_recorded(sd_folders):
    generator = load_variation_generator(sd_entry("sd_image_variation", sd_folders["sd_image_variation"]),
                                         dtype="bfloat16")
    assert generator.pipeline.unet.dtype.__repr__() == "torch.bfloat16" and generator.provenance.dtype == "bfloat16"
    (variations,) = generator.generate(coloured_images(1, 24, seed=10), [1], 2)
    assert [image.size for image in variations] == [(SD_OUTPUT_SIZE, SD_OUTPUT_SIZE)] * 2
