"""Canonical batches (models.prompting.features): an image's features are the same bits whoever asks first, for
whichever subset and in whichever order, because they are always computed in the same batch of their image set."""

import numpy as np
import pytest
import torch
from PIL import Image

from models.experiments import features_for_images
from models.prompting.features import ImageSet, encode_set_batches
from models.provenance import sha256_file
from tests.prompting.test_feature_cache import IMAGE_SIZE, CountingImageTower, ToyBackbone, ToyPreprocess, ToySpec


@pytest.fixture
def backbone() -> ToyBackbone:
    return ToyBackbone(CountingImageTower(), ToyPreprocess(), "ab" * 32, ToySpec())


@pytest.fixture
def dataset(tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(1)
    paths = []
    for index in range(40):
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(
            image_dir / f"{index:02d}.png")
        paths.append(f"{index:02d}.png")
    hashes = [sha256_file(image_dir / p) for p in paths]
    return image_dir, paths, hashes


def test_plain_batches_would_change_the_bits(reference_clip):
    """Why: the same image gets other bits in another batch of a CLIP image tower. Which batches differ depends on
    the CPU's kernels (even vs odd rows on some, batch size on others), so every way a plain request could batch an
    image is tried on the reference tiny CLIP, and at least one must change its bits."""
    model, _ = reference_clip
    pixels = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        canonical = model.encode_image(pixels)[0]
        other_batches = {
            "moved to row 1": (torch.cat([pixels[1:2], pixels[:1], pixels[2:]]), 1),
            "alone": (pixels[:1], 0),
            "with 4 others": (pixels[:5], 0),
        }
        changed = [name for name, (batch, row) in other_batches.items()
                   if not torch.equal(model.encode_image(batch)[row], canonical)]
    assert changed, "image 0 got the same bits in every batch tried"


def test_two_workspaces_caching_different_subsets_in_different_orders_read_the_same_bits(tmp_path, backbone,
                                                                                         dataset):
    image_dir, paths, hashes = dataset
    image_set = ImageSet.of(image_dir, paths, hashes, batch_size=16)
    whole = features_for_images(backbone, image_set, paths, hashes, None)
    one, other = tmp_path / "workspace-a", tmp_path / "workspace-b"
    features_for_images(backbone, image_set, paths[:5], hashes[:5], one)
    features_for_images(backbone, image_set, paths[30:][::-1], hashes[30:][::-1], other)
    features_for_images(backbone, image_set, paths[11:23], hashes[11:23], other)
    order = list(np.random.default_rng(3).permutation(40))
    read_one = features_for_images(backbone, image_set, [paths[i] for i in order], [hashes[i] for i in order], one)
    read_other = features_for_images(backbone, image_set, [paths[i] for i in order], [hashes[i] for i in order],
                                     other)
    assert torch.equal(read_one, whole[order]) and torch.equal(read_other, whole[order])


def test_a_folder_is_its_own_set_in_its_own_namespace(tmp_path, backbone, dataset):
    """Without an ImageSet the requested images are the set: exact for that request, cached apart."""
    image_dir, paths, hashes = dataset
    features_for_images(backbone, image_dir, paths[:4], hashes[:4], tmp_path / "cache")
    features_for_images(backbone, ImageSet.of(image_dir, paths, hashes), paths[:4], hashes[:4], tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_an_image_outside_the_set_is_refused_naming_the_folder(backbone, dataset, tmp_path):
    image_dir, paths, hashes = dataset
    image_set = ImageSet.of(image_dir, paths[:10], hashes[:10])
    with pytest.raises(ValueError, match=f"is not in the image set of {image_dir}"):
        features_for_images(backbone, image_set, paths[12:13], hashes[12:13], tmp_path / "cache")


def test_decoding_workers_give_the_same_bits_and_name_a_broken_file(monkeypatch, backbone, dataset):
    image_dir, paths, hashes = dataset
    image_set = ImageSet.of(image_dir, paths, hashes, batch_size=8)
    monkeypatch.setenv("PROMPTLAB_LOADER_WORKERS", "0")
    _, in_process = encode_set_batches(backbone.model, backbone.preprocess_eval, image_set, range(5))
    monkeypatch.setenv("PROMPTLAB_LOADER_WORKERS", "2")
    _, with_workers = encode_set_batches(backbone.model, backbone.preprocess_eval, image_set, range(5))
    assert torch.equal(in_process, with_workers)
    broken = image_set.relative_paths[9]
    (image_dir / broken).write_bytes(b"not a png")
    with pytest.raises(Exception, match=broken):
        encode_set_batches(backbone.model, backbone.preprocess_eval, image_set, [1])


def test_tiny_clip_subsets_read_the_whole_sets_bits(tmp_path, dataset):
    """The same on a real open_clip architecture (tiny-clip, random weights)."""
    import open_clip

    from models.backbones.tiny_clip import register_embedded_model_configs

    register_embedded_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip", pretrained=None)
    backbone = ToyBackbone(model.eval(), preprocess, "cd" * 32, ToySpec("tiny-clip"))
    image_dir, paths, hashes = dataset
    image_set = ImageSet.of(image_dir, paths, hashes, batch_size=16)
    whole = features_for_images(backbone, image_set, paths, hashes, None)
    features_for_images(backbone, image_set, paths[25:27], hashes[25:27], tmp_path / "cache")
    cached = features_for_images(backbone, image_set, paths, hashes, tmp_path / "cache")
    assert torch.equal(cached, whole)
    alone = features_for_images(backbone, image_dir, paths[25:27], hashes[25:27], None)  # its own set: 2 images
    assert torch.allclose(alone, whole[25:27], atol=1e-4)


def test_batches_never_cross_a_split_so_the_test_split_alone_is_encoded(tmp_path, backbone, dataset):
    image_dir, paths, hashes = dataset
    splits = ["train"] * 25 + ["test"] * 15
    image_set = ImageSet.of(image_dir, paths, hashes, splits, batch_size=8)
    assert [len(batch) for batch in image_set.batches] == [8, 7, 8, 8, 8, 1]  # test: 8 + 7; train: 8 + 8 + 8 + 1
    assert {image_set.groups[p] for batch in image_set.batches for p in batch[:1]} == {"train", "test"}
    assert all(len({image_set.groups[p] for p in batch}) == 1 for batch in image_set.batches)
    test = features_for_images(backbone, image_set, paths[25:], hashes[25:], tmp_path / "cache")
    assert backbone.model.encoded_images == 15 and backbone.model.calls == 2
    whole = features_for_images(backbone, image_set, paths, hashes, None)
    assert torch.equal(test, whole[25:])
