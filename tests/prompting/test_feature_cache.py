"""The per-image feature cache (models.prompting.feature_cache) through `features_for_images`, as the pipeline
uses it: reuse across overlapping image sets, keys, order, atomic writes, damaged shards and concurrent writers."""

import multiprocessing
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.experiments import features_for_images
from models.prompting.feature_cache import (FeatureCache, FeatureCacheError, FeatureCacheWarning,
                                            FeatureNamespace)
from models.prompting.features import ImageSet
from models.provenance import sha256_file

IMAGE_SIZE = 8
EMBED_DIM = 6


class ToyPreprocess:
    """An eval transform with a meaningful repr (the cache key includes it)."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0 * self.scale).permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"ToyPreprocess(scale={self.scale})"


class CountingImageTower(torch.nn.Module):
    """A fixed random projection of the pixels that counts how many images it encoded and its encoder passes."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.projection = torch.nn.Parameter(torch.randn(3 * IMAGE_SIZE * IMAGE_SIZE, EMBED_DIM, generator=generator),
                                             requires_grad=False)
        self.encoded_images = 0
        self.calls = 0

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        self.encoded_images += pixels.shape[0]
        self.calls += 1
        return pixels.flatten(1) @ self.projection


@dataclass
class ToySpec:
    name: str = "toy-clip"


@dataclass
class ToyBackbone:
    model: CountingImageTower
    preprocess_eval: ToyPreprocess
    weights_sha256: str
    spec: ToySpec
    device: torch.device = torch.device("cpu")


@pytest.fixture
def backbone() -> ToyBackbone:
    return ToyBackbone(CountingImageTower(), ToyPreprocess(), "ab" * 32, ToySpec())


@pytest.fixture
def images(tmp_path) -> tuple[Path, list[str], list[str]]:
    """24 distinct, asymmetric RGB images on disk: (their ImageSet in canonical batches of 8, relative paths, content
    sha256)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(24):
        relative = f"class_{index % 3}/img_{index:02d}.png"
        (image_dir / relative).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(image_dir / relative)
        paths.append(relative)
    hashes = [sha256_file(image_dir / p) for p in paths]
    image_set = ImageSet.of(image_dir, paths, hashes, batch_size=8)
    # listed in the set's canonical order: paths[:8] is batch 0, paths[8:16] batch 1, paths[16:] batch 2
    return image_set, list(image_set.relative_paths), list(image_set.content_hashes)


def test_an_overlapping_image_set_encodes_only_its_new_images(tmp_path, backbone, images):
    image_set, paths, hashes = images
    cache_dir = tmp_path / "cache"
    four_shot = features_for_images(backbone, image_set, paths[:5], hashes[:5], cache_dir)
    assert backbone.model.encoded_images == 8  # the whole canonical batch holding them, all of it stored
    sixteen_shot = features_for_images(backbone, image_set, paths[:14], hashes[:14], cache_dir)
    assert backbone.model.encoded_images == 8 + 8  # only the batch the 4-shot set did not touch
    assert torch.equal(sixteen_shot[:5], four_shot)
    again = features_for_images(backbone, image_set, paths[:16], hashes[:16], cache_dir)
    assert backbone.model.encoded_images == 16  # fully cached: nothing encoded
    again = again[:14]
    assert torch.equal(again, sixteen_shot)


def test_cached_features_equal_uncached_encoding(tmp_path, backbone, images):
    image_set, paths, hashes = images
    uncached = features_for_images(backbone, image_set, paths, hashes, None, with_mirror=True)
    cold = features_for_images(backbone, image_set, paths, hashes, tmp_path / "cache", with_mirror=True)
    warm = features_for_images(backbone, image_set, paths, hashes, tmp_path / "cache", with_mirror=True)
    assert uncached.shape == (24, 2, EMBED_DIM)
    assert torch.equal(cold, uncached)
    assert torch.equal(warm, uncached)
    # the mirrored view is really the flipped image, not a copy of the original
    assert not torch.allclose(uncached[:, 0], uncached[:, 1])


def test_returned_rows_follow_the_request_order_including_duplicates(tmp_path, backbone, images):
    image_set, paths, hashes = images
    reference = features_for_images(backbone, image_set, paths, hashes, None)
    features_for_images(backbone, image_set, paths[:12], hashes[:12], tmp_path / "cache")  # half cached
    order = [17, 3, 3, 0, 23, 11, 12, 5, 17]
    encoded_before = backbone.model.encoded_images
    result = features_for_images(backbone, image_set, [paths[i] for i in order], [hashes[i] for i in order],
                                 tmp_path / "cache")
    # bit for bit: canonical batches, so who asked first and for what cannot change the rounding
    assert torch.equal(result, reference[order])
    assert backbone.model.encoded_images - encoded_before == 8  # 17 and 23: their batch (12's batch was stored)


@pytest.mark.parametrize("change", ["weights", "transform", "backbone_name"])
def test_other_weights_transform_or_backbone_miss(tmp_path, backbone, images, change):
    image_set, paths, hashes = images
    features_for_images(backbone, image_set, paths[:6], hashes[:6], tmp_path / "cache")
    other = {"weights": replace(backbone, weights_sha256="cd" * 32),
             "transform": replace(backbone, preprocess_eval=ToyPreprocess(scale=2.0)),
             "backbone_name": replace(backbone, spec=ToySpec("other-clip"))}[change]
    other.model.encoded_images = 0
    features_for_images(other, image_set, paths[:6], hashes[:6], tmp_path / "cache")
    assert other.model.encoded_images == 8


def test_features_encoded_at_another_precision_miss(tmp_path, backbone, images, monkeypatch):
    """Features encoded under bf16 autocast (CUDA) are not served to an fp32 (CPU) run, nor the other way."""
    import models.prompting.feature_cache as feature_cache
    from models.precision import Precision

    image_set, paths, hashes = images
    features_for_images(backbone, image_set, paths[:6], hashes[:6], tmp_path / "cache")
    assert backbone.model.encoded_images == 8
    monkeypatch.setattr(feature_cache, "precision_for", lambda device, training: Precision("cuda", torch.bfloat16))
    assert FeatureNamespace.of(backbone, "original").precision == "bf16-autocast"
    features_for_images(backbone, image_set, paths[:6], hashes[:6], tmp_path / "cache")
    assert backbone.model.encoded_images == 16
    folders = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert len(folders) == 2 and any("-bf16-autocast-" in name for name in folders)
    assert any("-fp32-" in name for name in folders)


def test_each_view_is_cached_separately(tmp_path, backbone, images):
    image_set, paths, hashes = images
    features_for_images(backbone, image_set, paths[:6], hashes[:6], tmp_path / "cache")
    assert backbone.model.encoded_images == 8
    both = features_for_images(backbone, image_set, paths[:6], hashes[:6], tmp_path / "cache", with_mirror=True)
    assert backbone.model.encoded_images == 16  # the original view hit, the mirrored view missed
    assert both.shape == (6, 2, EMBED_DIM)


def test_one_shard_per_store_not_one_file_per_image(tmp_path, backbone, images):
    image_set, paths, hashes = images
    features_for_images(backbone, image_set, paths[:10], hashes[:10], tmp_path / "cache")
    features_for_images(backbone, image_set, paths, hashes, tmp_path / "cache")
    cache = FeatureCache(tmp_path / "cache")
    shards = cache.shard_paths(FeatureNamespace.of(backbone, "original", image_set.batching))
    assert len(shards) == 2
    assert backbone.model.encoded_images == 24  # each image encoded once: batches 0-1, then batch 2
    assert backbone.model.calls == 3  # one encoder pass per canonical batch


def test_small_shards_are_merged_and_every_entry_stays_readable(tmp_path):
    cache = FeatureCache(tmp_path / "cache", shard_rows=8, max_small_shards=3)
    namespace = FeatureNamespace("toy", "ab" * 32, "T()", "original")
    expected = {}
    for index in range(20):  # 20 stores of one entry each
        digest = bytes([index]) * 32
        row = torch.full((1, 4), float(index))
        cache.store(namespace, [digest], row)
        expected[digest] = row[0]
    assert len(cache.shard_paths(namespace)) <= 3 + 1 + 20 // 8
    found = cache.lookup(namespace, list(expected))
    assert set(found) == set(expected)
    assert all(torch.equal(found[d], expected[d]) for d in expected)


def test_a_crash_while_writing_leaves_no_entry_that_reads_as_valid(tmp_path, backbone, images, monkeypatch):
    image_set, paths, hashes = images
    cache_dir = tmp_path / "cache"

    def crash(source, target):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr("models.prompting.feature_cache.os.replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        features_for_images(backbone, image_set, paths[:5], hashes[:5], cache_dir)
    monkeypatch.undo()
    namespace_dir = FeatureCache(cache_dir).namespace_dir(FeatureNamespace.of(backbone, "original", image_set.batching))
    assert not list(namespace_dir.glob("shard-*")) and not list(namespace_dir.glob(".tmp-*"))
    # a temporary file left by a killed writer is never read as an entry
    (namespace_dir / ".tmp-deadbeef-shard-00000000000000000000-000000000000.safetensors").write_bytes(b"partial")
    backbone.model.encoded_images = 0
    result = features_for_images(backbone, image_set, paths[:5], hashes[:5], cache_dir)
    assert backbone.model.encoded_images == 8
    assert torch.equal(result, features_for_images(backbone, image_set, paths[:5], hashes[:5], None))


@pytest.mark.parametrize("damage", ["truncate", "flip_feature_byte", "garbage"])
def test_a_damaged_shard_is_moved_aside_with_a_warning_and_re_encoded(tmp_path, backbone, images, damage):
    image_set, paths, hashes = images
    cache_dir = tmp_path / "cache"
    reference = features_for_images(backbone, image_set, paths[:6], hashes[:6], cache_dir)
    (shard,) = FeatureCache(cache_dir).shard_paths(FeatureNamespace.of(backbone, "original", image_set.batching))
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 10]
    elif damage == "flip_feature_byte":
        data[-3] ^= 0xFF  # the last bytes are feature values: only the checksum can tell
    else:
        data = bytearray(b"not a safetensors file at all")
    shard.write_bytes(bytes(data))
    backbone.model.encoded_images = 0
    with pytest.warns(FeatureCacheWarning, match=shard.name):
        result = features_for_images(backbone, image_set, paths[:6], hashes[:6], cache_dir)
    assert backbone.model.encoded_images == 8
    assert torch.equal(result, reference)
    assert shard.with_name(shard.name + ".corrupt").exists() and not shard.exists()


def test_a_namespace_folder_holding_other_features_fails_naming_the_file(tmp_path, backbone, images):
    image_set, paths, hashes = images
    features_for_images(backbone, image_set, paths[:2], hashes[:2], tmp_path / "cache")
    namespace_file = FeatureCache(tmp_path / "cache").namespace_dir(FeatureNamespace.of(backbone, "original", image_set.batching)) \
        / "namespace.json"
    namespace_file.write_text('{"backbone": "someone-else"}')
    with pytest.raises(FeatureCacheError, match="namespace.json"):
        features_for_images(backbone, image_set, paths[:2], hashes[:2], tmp_path / "cache")


def test_content_hashes_must_be_sha256_and_match_the_images(tmp_path, backbone, images):
    image_set, paths, hashes = images
    with pytest.raises(ValueError, match=r"content_hashes\[1\]"):
        features_for_images(backbone, image_set, paths[:2], [hashes[0], "not-a-hash"], tmp_path / "cache")
    with pytest.raises(ValueError, match="2 images but 1 content hashes"):
        features_for_images(backbone, image_set, paths[:2], hashes[:1], tmp_path / "cache")


def _concurrent_writer(root: str, worker: int, queue) -> None:
    try:
        cache = FeatureCache(Path(root), shard_rows=16, max_small_shards=2)
        namespace = FeatureNamespace("toy", "ab" * 32, "T()", "original")
        for step in range(30):
            # both workers write overlapping entries (same digests, same values) and read everything back
            digests = [bytes([(step + k) % 40]) * 32 for k in range(3)]
            cache.store(namespace, digests, torch.stack([torch.full((4,), float(d[0])) for d in digests]))
            found = cache.lookup(namespace, digests)
            assert all(torch.equal(found[d], torch.full((4,), float(d[0]))) for d in digests), worker
        queue.put(None)
    except BaseException as error:  # noqa: BLE001 -- report to the parent
        queue.put(repr(error))


@pytest.mark.skipif(os.name != "posix", reason="fork start method")
def test_two_processes_writing_and_merging_at_once_do_not_corrupt_the_cache(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_concurrent_writer, args=(str(tmp_path), w, queue)) for w in range(2)]
    for worker in workers:
        worker.start()
    errors = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert errors == [None, None]
    cache = FeatureCache(tmp_path)
    namespace = FeatureNamespace("toy", "ab" * 32, "T()", "original")
    everything = [bytes([i]) * 32 for i in range(32)]  # steps 0..29 + 3 cover digests 0..31
    found = cache.lookup(namespace, everything)
    assert set(found) == set(everything)
    assert all(torch.equal(found[d], torch.full((4,), float(d[0]))) for d in everything)
    assert not list(cache.namespace_dir(namespace).glob("*.corrupt"))


def test_a_batch_another_worker_stored_meanwhile_is_not_stored_again(tmp_path):
    """Two workers missing the same canonical batch both encode it; the second finds every row stored by the first
    between its lookup and its store, and reads them instead of failing (it did: an empty shard was stacked)."""
    from models.prompting.feature_cache import FeatureCache, FeatureNamespace

    namespace = FeatureNamespace("toy", "ab" * 32, "T()", "augmented", "fp32", "set-x", "recipe-pass0")
    hashes = [f"{index:064x}" for index in range(4)]
    features = torch.arange(12, dtype=torch.float32).view(4, 3)
    other_worker = FeatureCache(tmp_path / "cache")

    def encode(missing):
        other_worker.store(namespace, [bytes.fromhex(h) for h in hashes], features)  # the other worker wins
        return hashes, features

    read = FeatureCache(tmp_path / "cache").features_by_hash(namespace, hashes[1:3], encode)
    assert torch.equal(read, features[1:3])
    assert len(FeatureCache(tmp_path / "cache").shard_paths(namespace)) == 1
