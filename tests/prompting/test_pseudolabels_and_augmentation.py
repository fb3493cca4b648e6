import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from models.augmentation import AugmentationSettings, augment_with_diffusion
from models.pseudolabels import pseudolabel_accuracy, pseudolabel_table, select_top_k_per_class


def test_fpl_keeps_the_most_confident_per_predicted_class():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    table = pseudolabel_table([f"img{i}.png" for i in range(5)], probabilities)
    selected = select_top_k_per_class(table, per_class=2)
    assert selected["relative_path"].to_list() == ["img0.png", "img2.png", "img3.png", "img4.png"]
    truth = pl.DataFrame({"relative_path": [f"img{i}.png" for i in range(5)], "label": [0, 0, 1, 1, 0]})
    assert pseudolabel_accuracy(selected, truth) == 0.5


def test_pseudolabel_accuracy_refuses_unknown_images():
    selected = pl.DataFrame({"relative_path": ["ghost.png"], "pseudo_label": [0], "confidence": [0.9]})
    with pytest.raises(ValueError, match="missing"):
        pseudolabel_accuracy(selected, pl.DataFrame({"relative_path": ["a.png"], "label": [0]}))


def test_augmentation_keeps_only_variations_similar_to_their_source(tmp_path, reference_clip):
    model, _ = reference_clip
    sources = [Image.new("RGB", (32, 32), colour) for colour in [(250, 10, 10), (10, 250, 10)]]

    def fake_variations(diffusion, images, strength, num_variations, seed, num_inference_steps):
        # variation 0: the source itself (similarity 1); variation 1: the colour inverted (dissimilar)
        return torch.stack([images, 1 - images], dim=1)

    def preprocess(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)

    settings = AugmentationSettings(variations_per_image=2, strength=0.5, similarity_threshold=0.99,
                                    num_inference_steps=5, seed=3)
    table = augment_with_diffusion(fake_variations, None, model, preprocess, sources, ["red/a.png", "green/b.png"],
                                   [0, 1], settings, tmp_path)
    assert table.height == 4
    assert table.filter(pl.col("variation") == 0)["kept"].all()
    kept = table.filter(pl.col("kept"))
    assert kept["source_relative_path"].to_list() == ["red/a.png", "green/b.png"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(kept["relative_path"].to_list())
    assert set(table.columns) >= {"seed", "strength", "similarity", "source_relative_path"}
