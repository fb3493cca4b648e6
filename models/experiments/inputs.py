"""What one experiment reads: its curated inputs (`ExperimentInputs`), and the tensors its method takes for a list of
images (`method_inputs_for_images`: cached features from the frozen image tower, or preprocessed images for methods
that prompt it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch
from PIL import Image

from models.catalog import DatasetEntry, ExperimentConfig
from models.prompting.methods import get_method

if TYPE_CHECKING:
    from models.limited_labels import ExperimentRows
    from models.prompting.features import ImageSet
    from models.prompting.view_recipes import ViewRecipe
    from models.workspace import Workspace


@dataclass
class ExperimentInputs:
    """The curated inputs of one experiment on one dataset: their catalog entries, the dataset's validated index and
    class names, and the folder the index's relative paths start from."""

    dataset: DatasetEntry
    experiment: ExperimentConfig
    index: pl.DataFrame
    classnames: list[str]
    image_dir: Path

    @cached_property
    def image_set(self) -> ImageSet:
        """The dataset's images as one ImageSet, batched within each split: the features of any subset are computed
        in its canonical batches, so every experiment reads the same bits (models.prompting.features)."""
        from models.prompting.features import ImageSet

        return ImageSet.of_index(self.image_dir, self.index)

    @property
    def templates(self) -> list[str]:
        return self.experiment.templates_for(self.dataset)

    def fewshot_train(self, fewshot: pl.DataFrame, subset: str = "train") -> pl.DataFrame:
        """The labelled few-shot rows (subset train, or val: min(K, 4) per class) of this experiment, joined
        with the index (content hashes)."""
        from models.data.fewshot import fewshot_rows

        return fewshot_rows(fewshot, self.index, self.experiment.shots, self.experiment.seed, subset,
                            self.dataset.name)

    def experiment_rows(self, workspace: Workspace) -> ExperimentRows:
        """The labelled, validation and pool rows of this experiment (models.limited_labels.experiment_rows), from
        its learning setting's curated split or its few-shot subset."""
        from models.limited_labels import experiment_rows
        from models.storage import read_parquet_file

        fewshot = (read_parquet_file(workspace.fewshot_path(self.dataset.name)) if self.experiment.setting is None
                   else None)
        splits = (read_parquet_file(workspace.setting_splits_path(self.dataset.name))
                  if self.experiment.setting is not None else None)
        return experiment_rows(self.experiment, self.index, len(self.classnames), fewshot, splits)

    def class_split(self, workspace: Workspace) -> dict[str, Any]:
        """The dataset's curated class split: classnames, base_labels, new_labels."""
        return json.loads(workspace.class_split_path(self.dataset.name).read_text())

    def test_rows(self) -> pl.DataFrame:
        return self.index.filter(pl.col("split") == "test").sort("relative_path")


def features_for_images(
    backbone,
    images: ImageSet | Path,
    relative_paths: list[str],
    content_hashes: list[str],
    cache_dir: Path | None,
    with_mirror: bool = False,
    recipe: ViewRecipe | None = None,
) -> torch.Tensor:
    """Image features (N, E), or (N, 2, E) with the mirrored view, or (N, P, E) for the P passes of a view recipe
    (models.prompting.view_recipes), through the per-image feature cache.

    `images` is the ImageSet the features are computed in (a dataset's images: every subset then reads the same
    bits; models.prompting.features), or a folder, when the requested images are their own set. Only the canonical
    batches holding images the cache lacks are decoded and encoded, then every image they hold is stored. Without a
    cache_dir the batches holding the requested images are encoded.
    """
    from models.prompting.feature_cache import FeatureCache, FeatureNamespace
    from models.prompting.features import ImageSet, encode_set_batches
    from models.prompting.view_recipes import backbone_input_size

    if len(relative_paths) != len(content_hashes):
        raise ValueError(f"{len(relative_paths)} images but {len(content_hashes)} content hashes")
    if recipe is not None and with_mirror:
        raise ValueError("a view recipe replaces the original and mirrored views; ask for one or the other")
    image_set = images if isinstance(images, ImageSet) else ImageSet.of(images, relative_paths, content_hashes)
    if recipe is not None:
        size = backbone_input_size(backbone)
        views = [("augmented", recipe.pass_view(index, size), recipe.cache_view_name(index))
                 for index in range(recipe.passes)]
    else:
        views = [(name, None, "") for name in (("original", "mirrored") if with_mirror else ("original",))]
    cache = FeatureCache(Path(cache_dir)) if cache_dir is not None else None
    per_view = []
    for name, augmented_view, recipe_name in views:
        def encode(missing: list[str], name=name, augmented_view=augmented_view) -> tuple[list[str], torch.Tensor]:
            return encode_set_batches(backbone.model, backbone.preprocess_eval, image_set,
                                      image_set.batches_holding(missing), backbone.device, mirrored=name == "mirrored",
                                      view=augmented_view)

        if cache is None:
            hashes, features = encode(list(dict.fromkeys(content_hashes)))
            row = {content_hash: index for index, content_hash in enumerate(hashes)}
            per_view.append(features[[row[content_hash] for content_hash in content_hashes]])
        else:
            namespace = FeatureNamespace.of(backbone, name, image_set.batching, recipe_name)
            per_view.append(cache.features_by_hash(namespace, content_hashes, encode))
    return torch.stack(per_view, dim=1) if len(views) > 1 or recipe is not None else per_view[0]


def preprocessed_images(
    backbone, image_dir: Path, relative_paths: list[str], with_mirror: bool = False,
    recipe: ViewRecipe | None = None, content_hashes: list[str] | None = None,
) -> torch.Tensor:
    """Images through the backbone's eval transform, (N, 3, H, W), or (N, 2, 3, H, W) with the mirrored view, or
    (N, P, 3, H, W) for the P passes of a view recipe (which draws each view from the image's content hash)."""
    from models.data.index import load_images
    from models.prompting.view_recipes import backbone_input_size

    images = load_images(image_dir, relative_paths)
    if not images:
        raise ValueError(f"no images to preprocess under {image_dir}")
    if recipe is not None:
        if content_hashes is None or len(content_hashes) != len(images):
            raise ValueError("a view recipe needs the content hash of every image")
        size = backbone_input_size(backbone)
        passes = [recipe.pass_view(index, size) for index in range(recipe.passes)]
        return torch.stack([torch.stack([backbone.preprocess_eval(view(image, content_hash)) for view in passes])
                            for image, content_hash in zip(images, content_hashes)])
    views = [[backbone.preprocess_eval(image) for image in images]]
    if with_mirror:
        views.append([backbone.preprocess_eval(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) for image in images])
    stacked = [torch.stack(view) for view in views]
    return torch.stack(stacked, dim=1) if with_mirror else stacked[0]


def method_inputs_for_images(
    method: str,
    backbone,
    images: ImageSet | Path,
    relative_paths: list[str],
    content_hashes: list[str],
    cache_dir: Path | None,
    with_mirror: bool = False,
    recipe: ViewRecipe | None = None,
) -> torch.Tensor:
    """What the method's classifier takes for these images: cached features from the frozen image tower (computed in
    `images`, the dataset's ImageSet, or a folder: see features_for_images), or preprocessed images when the method
    prompts the image tower (they must pass through it at every step). With a view recipe: its P augmented passes
    (N, P, ...) instead of the original and mirrored views."""
    from models.prompting.features import ImageSet

    if get_method(method).frozen_image_encoder:
        return features_for_images(backbone, images, relative_paths, content_hashes, cache_dir, with_mirror, recipe)
    folder = images.image_dir if isinstance(images, ImageSet) else images
    return preprocessed_images(backbone, folder, relative_paths, with_mirror and recipe is None, recipe,
                               content_hashes)
