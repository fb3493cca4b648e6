"""backbones.yaml's diffusion_backbones: the shipped entries, validation errors, overrides, and loading an entry of a
catalog copy through the promptlab resource."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from diffusion_toys import SD_OUTPUT_SIZE, coloured_images
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, DiffusionBackboneEntry, load_catalog


@pytest.fixture
def catalog_copy(tmp_path) -> Path:
    directory = tmp_path / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, directory, ignore=shutil.ignore_patterns("pretrained"))
    return directory


def edit_backbones(directory: Path, change) -> None:
    path = directory / "backbones.yaml"
    content = yaml.safe_load(path.read_text())
    change(content)
    path.write_text(yaml.safe_dump(content, sort_keys=False))


def entry_named(content: dict, name: str) -> dict:
    return next(entry for entry in content["diffusion_backbones"] if entry["name"] == name)


def test_the_shipped_catalog_lists_the_embedded_ddpm_and_difftpts_pipelines():
    catalog = load_catalog()
    assert catalog.default_diffusion_backbone == "embedded-ddpm"
    assert catalog.diffusion_backbone() == DiffusionBackboneEntry(
        name="embedded-ddpm", source="embedded", kind="embedded_img2img", num_inference_steps=20, strength=0.4)
    variations = catalog.diffusion_backbone("sd-image-variations")
    assert (variations.source, variations.model_id, variations.revision, variations.kind) == (
        "hub", "lambdalabs/sd-image-variations-diffusers", "v2.0", "sd_image_variation")
    assert (variations.guidance_scale, variations.num_inference_steps, variations.output_size, variations.strength,
            variations.dtype) == (3.0, 50, 512, None, "float32")
    img2img = catalog.diffusion_backbone("sd-img2img")
    assert (img2img.model_id, img2img.kind, img2img.prompt, img2img.output_size) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd_img2img", "a photo", 512)
    with pytest.raises(CatalogError, match=r"unknown diffusion backbone 'sd-xl'; the catalog has \['embedded-ddpm'"):
        catalog.diffusion_backbone("sd-xl")


def test_unset_settings_take_the_kinds_defaults(catalog_copy):
    edit_backbones(catalog_copy, lambda content: content["diffusion_backbones"].append(
        {"name": "bare-variations", "source": "hub", "model_id": "org/model", "kind": "sd_image_variation"}))
    entry = load_catalog(catalog_copy).diffusion_backbone("bare-variations")
    assert (entry.num_inference_steps, entry.guidance_scale, entry.output_size, entry.strength, entry.prompt,
            entry.revision) == (50, 3.0, 512, None, None, None)


@pytest.mark.parametrize("change, message", [
    ({"kind": "sd_inpaint"}, r"'kind' must be one of "
                             r"\('embedded_img2img', 'sd_image_variation', 'sd_img2img'\), got 'sd_inpaint'"),
    ({"source": "s3"}, r"'source' must be one of "
                       r"\('embedded', 'hub', 'local_dir'\), got 's3'"),
    ({"output_size": 500}, r"\(sd-image-variations\): 'output_size' 500 is not a multiple of 8"),
    ({"strength": 0.5}, r"\(sd-image-variations\): \['strength'\] do not apply to kind 'sd_image_variation'"),
    ({"guidance": 3}, r"\(sd-image-variations\): unknown field\(s\) \['guidance'\]"),
    ({"model_id": None}, r"\(sd-image-variations\): source 'hub' needs 'model_id'"),
    ({"path": "/weights"}, r"\(sd-image-variations\): 'path' does not apply to source 'hub'"),
    ({"dtype": "float64"}, r"\(sd-image-variations\): 'dtype' must be one of \('float32', 'float16', 'bfloat16'\)"),
    ({"num_inference_steps": 0}, r"\(sd-image-variations\): 'num_inference_steps' must be an integer >= 1"),
    ({"source": "embedded", "model_id": None, "revision": None},
     r"\(sd-image-variations\): source 'embedded' is the workspace's pretrained DDPM, which only runs as kind "
     r"'embedded_img2img'"),
])
def test_a_bad_entry_is_refused_naming_file_and_entry(catalog_copy, change, message):
    edit_backbones(catalog_copy, lambda content: entry_named(content, "sd-image-variations").update(change))
    with pytest.raises(CatalogError, match=message) as raised:
        load_catalog(catalog_copy)
    assert str(raised.value).startswith("backbones.yaml: diffusion_backbones[1] (sd-image-variations): ")


def test_img2img_needs_a_denoising_step(catalog_copy):
    edit_backbones(catalog_copy, lambda content: entry_named(content, "sd-img2img").update(
        strength=0.1, num_inference_steps=5))
    with pytest.raises(CatalogError, match=r"\(sd-img2img\): strength 0.1 x num_inference_steps 5 leaves no "
                                           r"denoising step"):
        load_catalog(catalog_copy)


def test_the_default_must_be_listed_and_names_unique(catalog_copy):
    edit_backbones(catalog_copy, lambda content: content.update(diffusion_default="sd-xl"))
    with pytest.raises(CatalogError, match=r"backbones.yaml: diffusion_default 'sd-xl' is not one of the "
                                           r"diffusion_backbones \['embedded-ddpm'"):
        load_catalog(catalog_copy)
    edit_backbones(catalog_copy, lambda content: content.update(
        diffusion_default="embedded-ddpm", diffusion_backbones=content["diffusion_backbones"] * 2))
    with pytest.raises(CatalogError, match=r"diffusion_backbones\[3\]: the name 'embedded-ddpm' appears twice"):
        load_catalog(catalog_copy)


def test_a_catalog_without_diffusion_backbones_still_loads(catalog_copy):
    edit_backbones(catalog_copy, lambda content: [content.pop(key) for key in ("diffusion_default",
                                                                               "diffusion_backbones")])
    # DiffTPT's runs name a diffusion backbone, which this catalog no longer has: refused, naming the setting
    with pytest.raises(CatalogError, match="test_time.modes.difftpt.diffusion_backbone"):
        load_catalog(catalog_copy)
    experiments = yaml.safe_load((catalog_copy / "experiments.yaml").read_text())
    experiments.pop("test_time")
    (catalog_copy / "experiments.yaml").write_text(yaml.safe_dump(experiments))
    catalog = load_catalog(catalog_copy)
    assert catalog.diffusion_backbones == {} and catalog.default_diffusion_backbone is None
    with pytest.raises(CatalogError, match="lists no diffusion_backbones"):
        catalog.diffusion_backbone()


def test_overrides_are_validated_like_the_catalog():
    catalog = load_catalog()
    where = "experiments.yaml: test_time.modes.difftpt.diffusion"
    entry = catalog.diffusion_backbone("sd-image-variations").overridden(
        {"num_inference_steps": 25, "guidance_scale": 5}, where)
    assert (entry.num_inference_steps, entry.guidance_scale, entry.model_id) == (
        25, 5.0, "lambdalabs/sd-image-variations-diffusers")
    with pytest.raises(CatalogError, match=r"experiments.yaml: test_time.modes.difftpt.diffusion \(diffusion backbone "
                                           r"sd-image-variations\): 'output_size' 300 is not a multiple of 8"):
        catalog.diffusion_backbone("sd-image-variations").overridden({"output_size": 300}, where)
    with pytest.raises(CatalogError, match=r"grid\[3\]: \['model_id'\] cannot be overridden on diffusion backbone "
                                           r"'embedded-ddpm'"):
        catalog.diffusion_backbone().overridden({"model_id": "other"}, "grid[3]")
    with pytest.raises(CatalogError, match=r"\['guidance_scale'\] do not apply to kind 'embedded_img2img'"):
        catalog.diffusion_backbone().overridden({"guidance_scale": 2.0}, "grid[3]")


def test_a_local_dir_entry_loads_through_the_resource(catalog_copy, sd_folders, tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    shutil.copytree(sd_folders["sd_img2img"], weights / "tiny-img2img")
    monkeypatch.setenv("PROMPTLAB_WEIGHTS", str(weights))
    edit_backbones(catalog_copy, lambda content: content["diffusion_backbones"].append(
        {"name": "img2img-local", "source": "local_dir", "path": "${PROMPTLAB_WEIGHTS}/tiny-img2img",
         "kind": "sd_img2img", "num_inference_steps": 4, "strength": 0.5, "output_size": SD_OUTPUT_SIZE}))
    from pipelines.resources import PromptLabResource

    resource = PromptLabResource(catalog_dir=str(catalog_copy), workspace_dir=str(tmp_path / "workspace"),
                                 device="cpu")
    assert resource.diffusion_backbone_entry().name == "embedded-ddpm"
    monkeypatch.setenv("PROMPTLAB_DIFFUSION_BACKBONE", "img2img-local")
    entry = resource.diffusion_backbone_entry()
    assert (entry.name, entry.path) == ("img2img-local", str(weights / "tiny-img2img"))
    generator = resource.load_variation_generator(overrides={"prompt": "a red square"})
    assert generator.provenance.prompt == "a red square" and generator.provenance.model_id == entry.path
    (variations,) = generator.generate(coloured_images(1, 24, seed=1), [1], 2)
    assert [image.size for image in variations] == [(SD_OUTPUT_SIZE, SD_OUTPUT_SIZE)] * 2
    named = PromptLabResource(catalog_dir=str(catalog_copy), workspace_dir=str(tmp_path / "workspace"),
                              diffusion_backbone="embedded-ddpm")
    assert named.diffusion_backbone_entry().name == "embedded-ddpm"  # the resource's setting wins over the env
    with pytest.raises(FileNotFoundError, match="materialize the tiny_diffusion_model asset"):
        named.load_variation_generator()
