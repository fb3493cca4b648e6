from __future__ import annotations

import polars as pl
import pytest

from models.data.fewshot import FewShotSamplingError, all_few_shot_subsets, sample_few_shot, servable_shots

CLASSNAMES = ("cat", "dog", "owl")


def hand_made_index(train_per_class: int = 5, val_per_class: int = 5) -> pl.DataFrame:
    rows = [
        (f"{classname}/{split}_{number}.png", label, classname, split)
        for label, classname in enumerate(CLASSNAMES)
        for split, count in (("train", train_per_class), ("val", val_per_class), ("test", 2))
        for number in range(count)
    ]
    # reversed, so the sampler has to sort candidates itself
    return pl.DataFrame(rows, schema=["relative_path", "label", "classname", "split"], orient="row").reverse()


# Pinned from the documented rule: per label, default_rng([seed, shots, label]) draws permutation(5) for
# train then permutation(5) for val; e.g. label 0 with seed 1, shots 2 takes train [4 1], val [3 1].
PINNED_SHOTS_2_SEED_1 = [
    "cat/train_1.png", "cat/train_4.png", "dog/train_0.png", "dog/train_3.png", "owl/train_2.png", "owl/train_4.png",
    "cat/val_1.png", "cat/val_3.png", "dog/val_0.png", "dog/val_1.png", "owl/val_0.png", "owl/val_1.png",
]


def test_selection_is_pinned_so_sampler_changes_are_caught():
    subset = sample_few_shot(hand_made_index(), shots=2, seed=1)
    assert subset.columns == ["relative_path", "label", "classname", "subset"]
    assert subset.get_column("relative_path").to_list() == PINNED_SHOTS_2_SEED_1
    assert subset.get_column("subset").to_list() == ["train"] * 6 + ["val"] * 6


def test_selection_is_deterministic_and_independent_of_row_order():
    index = hand_made_index()
    first = sample_few_shot(index, shots=2, seed=1)
    assert first.equals(sample_few_shot(index.sample(fraction=1.0, shuffle=True, seed=7), shots=2, seed=1))
    assert not first.equals(sample_few_shot(index, shots=2, seed=2))


@pytest.mark.parametrize(("shots", "val_per_class"), [(1, 1), (2, 2), (4, 4), (5, 4)])
def test_k_per_class_from_train_and_min_k_4_from_val(shots, val_per_class):
    subset = sample_few_shot(hand_made_index(train_per_class=5, val_per_class=6), shots=shots, seed=3)
    counts = dict(
        ((label, name), count) for label, name, count in subset.group_by(["label", "subset"]).len().iter_rows()
    )
    for label in range(len(CLASSNAMES)):
        assert counts[(label, "train")] == shots
        assert counts[(label, "val")] == val_per_class
    # train images come from train, val images from val, no duplicates, paths stay relative
    assert subset.filter(pl.col("subset") == "train").get_column("relative_path").str.contains("/train_").all()
    assert subset.filter(pl.col("subset") == "val").get_column("relative_path").str.contains("/val_").all()
    assert subset.get_column("relative_path").n_unique() == subset.height
    assert not subset.get_column("relative_path").str.starts_with("/").any()


def test_too_few_images_is_refused_naming_class_and_counts():
    index = hand_made_index(train_per_class=5).filter(pl.col("relative_path") != "dog/train_3.png")
    with pytest.raises(FewShotSamplingError, match=r"class 1 \['dog'\]: 4 train images, 5 needed for 5-shot"):
        sample_few_shot(index, shots=5, seed=1)
    with pytest.raises(FewShotSamplingError, match=r"class 0 \['cat'\]: 3 val images, 4 needed for 8-shot"):
        sample_few_shot(hand_made_index(train_per_class=8, val_per_class=3), shots=8, seed=1)


def test_undecodable_candidates_are_refused():
    index = hand_made_index().with_columns((pl.col("relative_path") != "owl/val_2.png").alias("decodes"))
    with pytest.raises(FewShotSamplingError, match="owl/val_2.png"):
        sample_few_shot(index, shots=1, seed=1)


def test_all_subsets_stack_every_shots_and_seed():
    index = hand_made_index(train_per_class=4, val_per_class=4).with_columns(
        pl.col("relative_path").alias("content_sha256")
    )
    subsets = all_few_shot_subsets(index, shots_list=(1, 4), seeds=(1, 2))
    assert subsets.columns == ["shots", "seed", "relative_path", "label", "classname", "subset", "content_sha256"]
    sizes = {(shots, seed): count for shots, seed, count in subsets.group_by(["shots", "seed"]).len().iter_rows()}
    assert sizes == {(1, 1): 6, (1, 2): 6, (4, 1): 24, (4, 2): 24}
    one_shot_seed_2 = subsets.filter((pl.col("shots") == 1) & (pl.col("seed") == 2)).drop("shots", "seed")
    assert one_shot_seed_2.equals(sample_few_shot(index, shots=1, seed=2))


def test_a_requested_k_the_val_split_cannot_serve_is_refused_naming_dataset_k_class_and_its_val_images():
    index = hand_made_index(train_per_class=16, val_per_class=4).filter(
        ~pl.col("relative_path").is_in(["dog/val_2.png", "dog/val_3.png"]))  # dog keeps 2 val images
    protocol = (1, 2, 4, 8, 16)
    # nothing asks for 4 shots or more: those are left out, the rest drawn
    assert servable_shots(index, protocol, dataset="Pets") == (1, 2)
    with pytest.raises(FewShotSamplingError) as refused:
        servable_shots(index, protocol, dataset="Pets", requested={2: ["coop-k2-s1"], 8: ["coop-k8-s1"]})
    message = str(refused.value)
    assert message.startswith("Pets: 8-shot") and "coop-k8-s1" in message and "4 val" in message
    assert "class 1 ('dog') has 2 val images" in message
    # where val is test (ImageNet) only train counts; a class with no val image at all is short of every K
    assert servable_shots(index, protocol, dataset="Pets", val_is_test=True, requested={16: ["x"]}) == protocol
    no_val_for_owl = index.filter(~((pl.col("classname") == "owl") & (pl.col("split") == "val")))
    with pytest.raises(FewShotSamplingError, match=r"Pets: 1-shot .*class 2 \('owl'\) has 0 val images"):
        servable_shots(no_val_for_owl, protocol, dataset="Pets", requested={1: ["linearprobe-k1-s1"]})
