"""Augmented view sets (models.prompting.view_recipes): each (recipe, image, pass) view is a pure function of the
image's content, encoded once per pass and shared through the feature cache, whoever asks first."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from models.experiments import features_for_images
from models.prompting.feature_cache import FeatureNamespace
from models.prompting.features import ImageSet
from models.prompting.view_recipes import ViewRecipe
from models.provenance import sha256_file
from tests.prompting.test_feature_cache import IMAGE_SIZE, CountingImageTower, ToyBackbone, ToyPreprocess, ToySpec

SOURCE_SIZE = 24  # larger than the tower's input, so that crops and the resize to IMAGE_SIZE matter


class SizedTower(CountingImageTower):
    def __init__(self):
        super().__init__()
        self.visual = SimpleNamespace(image_size=IMAGE_SIZE)


class ResizingPreprocess(ToyPreprocess):
    def __call__(self, image: Image.Image) -> torch.Tensor:
        return super().__call__(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))


@pytest.fixture
def backbone() -> ToyBackbone:
    return ToyBackbone(SizedTower(), ResizingPreprocess(), "cd" * 32, ToySpec())


@pytest.fixture
def dataset(tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(2)
    paths = []
    for index in range(12):
        Image.fromarray(rng.integers(0, 256, (SOURCE_SIZE, SOURCE_SIZE, 3), dtype=np.uint8)).save(
            image_dir / f"{index:02d}.png")
        paths.append(f"{index:02d}.png")
    return image_dir, paths, [sha256_file(image_dir / p) for p in paths]


def test_a_view_depends_on_the_recipe_image_and_pass_only():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    recipe = ViewRecipe(passes=3, crop_scale=(0.3, 0.6), flip=True, seed=5)
    first = recipe.pass_view(1, (8, 8))
    again = ViewRecipe(passes=3, crop_scale=(0.3, 0.6), flip=True, seed=5).pass_view(1, (8, 8))
    digest = "ab" * 32
    assert np.array_equal(np.asarray(first(image, digest)), np.asarray(again(image, digest)))
    others = [recipe.pass_view(0, (8, 8))(image, digest), first(image, "cd" * 32),
              ViewRecipe(passes=3, crop_scale=(0.3, 0.6), seed=6).pass_view(1, (8, 8))(image, digest)]
    assert all(not np.array_equal(np.asarray(other), np.asarray(first(image, digest))) for other in others)
    assert first(image, digest).size == (8, 8)


def test_crops_cover_the_recipes_area_fraction():
    recipe = ViewRecipe(passes=1, crop_scale=(0.3, 0.6))
    view = recipe.pass_view(0, (8, 8))
    fractions = []
    for index in range(300):
        left, top, right, bottom = view.crop_box(100, 80, view.generator(f"{index:064x}"))
        assert 0 <= left < right <= 100 and 0 <= top < bottom <= 80
        fractions.append((right - left) * (bottom - top) / 8000)
    # rounding of the sides moves the area a little past the bounds
    assert 0.27 < min(fractions) < 0.36 and 0.54 < max(fractions) < 0.66


@pytest.mark.parametrize("raw, field", [
    ({"passes": 0}, "passes"), ({"passes": 2, "crop_scale": [0.0, 1.0]}, "crop_scale"),
    ({"passes": 2, "crop_scale": [0.5, 1.2]}, "crop_scale"), ({"passes": 2, "crop_scale": [0.8, 0.5]}, "crop_scale"),
    ({"passes": 2, "flip": "yes"}, "flip"), ({"passes": 2, "seed": -1}, "seed"), ({"crop_scale": [0.5, 1]}, "passes"),
    ({"passes": 2, "crops": 3}, "crops"),
])
def test_bad_recipes_are_refused_naming_the_field(raw, field):
    with pytest.raises(ValueError, match=field):
        ViewRecipe.from_mapping(raw)


def test_passes_are_encoded_once_and_shared_by_every_request(tmp_path, backbone, dataset):
    image_dir, paths, hashes = dataset
    image_set = ImageSet.of(image_dir, paths, hashes, batch_size=4)
    recipe = ViewRecipe(passes=3, crop_scale=(0.5, 1.0))
    cache = tmp_path / "cache"
    whole = features_for_images(backbone, image_set, paths, hashes, cache, recipe=recipe)
    assert whole.shape == (12, 3, 6)
    assert backbone.model.encoded_images == 36  # 12 images x 3 passes, once each
    subset = features_for_images(backbone, image_set, paths[5:9][::-1], hashes[5:9][::-1], cache, recipe=recipe)
    assert backbone.model.encoded_images == 36 and torch.equal(subset, whole[5:9].flip(0))
    # the passes differ from each other and from the original view
    original = features_for_images(backbone, image_set, paths, hashes, cache)
    assert not torch.equal(whole[:, 0], whole[:, 1]) and not torch.equal(whole[:, 0], original)
    # another workspace computing only a subset gets the same bits (canonical batches)
    alone = features_for_images(backbone, image_set, paths[5:9], hashes[5:9], tmp_path / "other", recipe=recipe)
    assert torch.equal(alone, whole[5:9])
    # fewer passes of the same crops share the cached passes; another seed is another namespace, encoded anew
    before = backbone.model.encoded_images
    first_two = features_for_images(backbone, image_set, paths, hashes, cache,
                                    recipe=ViewRecipe(passes=2, crop_scale=(0.5, 1.0)))
    assert backbone.model.encoded_images == before and torch.equal(first_two, whole[:, :2])
    features_for_images(backbone, image_set, paths[:2], hashes[:2], cache, recipe=ViewRecipe(passes=1, seed=2))
    assert backbone.model.encoded_images > before


def test_namespaces_without_a_recipe_keep_their_keys():
    """Folders written before recipes existed are found again: the key of a recipe-less namespace is unchanged."""
    from dataclasses import asdict

    from models.provenance import stable_hash

    namespace = FeatureNamespace("b", "w" * 64, "T()", "original", "fp32", "set-x")
    legacy = {key: value for key, value in asdict(namespace).items() if key != "recipe"}
    assert namespace.key == stable_hash(legacy, length=24)
    with pytest.raises(ValueError, match="recipe"):
        FeatureNamespace("b", "w" * 64, "T()", "augmented", "fp32", "set-x")
    augmented = FeatureNamespace("b", "w" * 64, "T()", "augmented", "fp32", "set-x",
                                 ViewRecipe(passes=2).cache_view_name(1))
    assert augmented.key != namespace.key
