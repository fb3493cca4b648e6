import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image, ImageOps

from models.augmentation import AugmentationSettings, augment_with_diffusion
from models.augmentation.generation import GenerationProvenance, per_image_seed
from models.pseudolabels import (
    STRATEGIES, get_strategy, pseudolabel_accuracy, pseudolabel_quality, pseudolabel_table, select_top_k_per_class)


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


class SourceAndInverse:
    """A stand-in generator: variation 0 is the source itself (similarity 1), variation 1 its inverted colours."""

    provenance = GenerationProvenance(generator="stand-in", kind="embedded_img2img", model_id="none",
                                      weights_sha256="0" * 64, num_inference_steps=5, strength=0.5,
                                      guidance_scale=None, output_size=32)

    def generate(self, images, seeds, num_variations):
        assert num_variations == 2
        return [[image.copy(), ImageOps.invert(image)] for image in images]


def test_augmentation_keeps_only_variations_similar_to_their_source(tmp_path, reference_clip):
    model, _ = reference_clip
    sources = [Image.new("RGB", (32, 32), colour) for colour in [(250, 10, 10), (10, 250, 10)]]

    def preprocess(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)

    settings = AugmentationSettings(variations_per_image=2, similarity_threshold=0.99, seed=3)
    table = augment_with_diffusion(SourceAndInverse(), model, preprocess, sources, ["red/a.png", "green/b.png"],
                                   [0, 1], ["a" * 64, "b" * 64], settings, tmp_path)
    assert table.height == 4
    assert table.filter(pl.col("variation") == 0)["kept"].all()
    kept = table.filter(pl.col("kept"))
    assert kept["source_relative_path"].to_list() == ["red/a.png", "green/b.png"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(kept["relative_path"].to_list())
    assert set(table.columns) >= {"seed", "strength", "similarity", "source_relative_path", "generator"}
    assert table["seed"].to_list() == [per_image_seed(3, "a" * 64)] * 2 + [per_image_seed(3, "b" * 64)] * 2


def test_the_strategy_registry_holds_the_published_schedules():
    assert set(STRATEGIES) == {"fpl", "ifpl", "grip"}
    assert get_strategy("fpl").rounds == 1 and get_strategy("ifpl").rounds == 10 and get_strategy("grip").rounds == 10
    with pytest.raises(ValueError, match=r"unknown pseudolabel strategy 'gripp'; known: \['fpl', 'grip', 'ifpl'\]"):
        get_strategy("gripp")


@pytest.mark.parametrize("pool_size, num_classes", [(1000, 10), (637, 20), (48, 6), (10, 10)])
def test_grip_grows_k_by_a_tenth_of_the_pool_until_the_whole_pool_is_used(pool_size, num_classes):
    grip = get_strategy("grip")
    schedule = [grip.per_class(r, pool_size, num_classes) for r in range(grip.rounds)]
    # grip_train: K_r = int((r + 1) * |U| / 10 / C), at least 1, never beyond floor(|U| / C)
    assert schedule == [max(1, min(int((r + 1) * pool_size / 10 / num_classes), pool_size // num_classes))
                        for r in range(10)]
    assert schedule == sorted(schedule) and schedule[-1] == pool_size // num_classes
    assert all(k * num_classes <= pool_size for k in schedule)  # the selection never outgrows the pool


def test_fpl_and_ifpl_keep_k_fixed_and_refuse_a_k_the_pool_cannot_hold():
    for name in ("fpl", "ifpl"):
        strategy = get_strategy(name)
        assert {strategy.per_class(r, 500, 10, fixed_per_class=16) for r in range(strategy.rounds)} == {16}
        with pytest.raises(ValueError, match=r"K = 16 per class needs 160 pool images for 10 classes, but the pool "
                                             r"holds 150"):
            strategy.per_class(0, 150, 10, fixed_per_class=16)
    with pytest.raises(ValueError, match="round 10 outside 0..9"):
        get_strategy("ifpl").per_class(10, 500, 10)
    with pytest.raises(ValueError, match="cannot give each of 10 classes"):
        get_strategy("grip").per_class(0, 9, 10)


def test_the_labelled_term_is_weighted_as_each_strategy_publishes():
    # 2 labels per class on 10 classes against 160 pseudolabels
    assert get_strategy("fpl").labelled_loss_weight(20, 160) == pytest.approx(160 / 20)  # |PL| / |L|
    assert get_strategy("ifpl").labelled_loss_weight(20, 160) == pytest.approx(20 / 160)  # |L| / |PL|
    assert get_strategy("grip").labelled_loss_weight(20, 160) == pytest.approx(20 / 160)
    assert get_strategy("grip").labelled_loss_weight(0, 160) == 1.0  # UL: no labelled term to balance


def test_an_image_is_pseudolabelled_into_one_class_at_most():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=40)
    table = pseudolabel_table([f"img{i:02d}.png" for i in range(40)], probabilities)
    selected = select_top_k_per_class(table, per_class=10)
    assert selected["relative_path"].is_unique().all()
    assert (selected["pseudo_label"].to_numpy() == probabilities.argmax(1)[
        [int(p[3:5]) for p in selected["relative_path"]]]).all()


def test_pseudolabel_quality_against_the_hidden_labels():
    selected = pl.DataFrame({"relative_path": ["a", "b", "c", "d"], "pseudo_label": [0, 0, 1, 1],
                             "confidence": [0.9, 0.8, 0.6, 0.7]})
    hidden = pl.DataFrame({"relative_path": ["a", "b", "c", "d", "e"], "label": [0, 1, 1, 1, 2]})
    quality = pseudolabel_quality(selected, hidden, num_classes=3)
    assert quality["pseudolabel_accuracy"] == pytest.approx(0.75)
    assert quality["class_coverage"] == pytest.approx(2 / 3)  # class 2 got no pseudolabel
    assert quality["worst_class_accuracy"] == pytest.approx(0.5)
    # ECE: bins (0.5, 0.6]: c right at 0.6; (0.6, 0.7]: d right at 0.7; (0.7, 0.8]: b wrong at 0.8; (0.8, 0.9]: a right
    assert quality["confidence_calibration_error"] == pytest.approx((0.4 + 0.3 + 0.8 + 0.1) / 4)
    with pytest.raises(ValueError, match="missing from the labelled index"):
        pseudolabel_quality(selected, hidden.head(2), num_classes=3)
