"""MVLPT on the reference tiny CLIP (no reference tensors exist for it; its prompts are CoOp's, VPT's and IVLP's, which
have their own tests): the pooled source set's labels index the concatenated class names and every source
contributes; a source prompt trains through the shared loop on it; the seeds' checkpoints average element-wise; a
target starts from exactly that average before any step and trains from it; prompts of another type or shape are
refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import polars as pl
import pytest
import torch

from models.catalog import ExperimentConfig
from models.experiments import TrainingSet, build_classifier, save_prompt_checkpoint, train_prompts
from models.experiments.multitask import (average_source_checkpoints, multitask_training_set, source_prompt,
                                          started_at, train_multitask_source)
from models.prompting.methods import parse_method_parameters
from models.prompting.methods.mvlpt import average_prompt_states, initialise_from_source
from models.prompting.training import OptimizationConfig

SOURCE_CLASSES = {"Colours": ["red", "green", "blue"], "Shapes": ["circle", "square"]}
TARGET_CLASSES = ["yellow", "cyan"]
TEMPLATES = ["a photo of a {}."]
COOP = {"context_init": "a photo of a", "class_token_position": "end"}
# within the reference model's 2 vision layers
DEPTHS = {"mvlpt_coop": {}, "mvlpt_vpt": {"prompt_depth": 2}, "mvlpt_ivlp": {"vision_prompt_depth": 2}}


def schedule(epochs: int = 1, **overrides) -> OptimizationConfig:
    return OptimizationConfig(**{"epochs": epochs, "batch_size": 4, "learning_rate": 0.02, "warmup_epochs": 0,
                                 "seed": 1, **overrides})


def toy_set(model, n_classes: int, seed: int, with_validation: bool = True) -> TrainingSet:
    """Image features of n_classes of noisy constant-colour images (4 per class), with a val set of 1 per class."""
    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for label in range(n_classes):
        colour = torch.randn(3, generator=generator)
        for _ in range(5):
            images.append(colour.view(3, 1, 1) + 0.3 * torch.randn(3, 32, 32, generator=generator))
            labels.append(label)
    with torch.no_grad():
        features = model.encode_image(torch.stack(images))
    labels = torch.tensor(labels)
    train = torch.arange(len(labels)) % 5 != 4
    validation = (features[~train], labels[~train]) if with_validation else None
    return TrainingSet(features[train], labels[train], validation=validation,
                       composition={"labelled": int(train.sum())}, selection="few_shot_val" if with_validation
                       else "last")


def source_sets(model) -> dict[str, TrainingSet]:
    return {name: toy_set(model, len(names), seed) for seed, (name, names) in enumerate(SOURCE_CLASSES.items())}


def test_published_defaults():
    mcoop = parse_method_parameters("mvlpt_coop", {})
    assert (mcoop.n_context, mcoop.context_init, mcoop.class_token_position, mcoop.class_specific_context) == (
        16, None, "middle", False)
    mvpt = parse_method_parameters("mvlpt_vpt", {})
    assert (mvpt.n_tokens, mvpt.prompt_depth) == (16, 12)
    mupt = parse_method_parameters("mvlpt_ivlp", {})
    assert (mupt.n_text_context, mupt.n_vision_tokens, mupt.context_init, mupt.text_prompt_depth,
            mupt.vision_prompt_depth) == (4, 4, None, 1, 12)


def test_pooled_labels_index_the_concatenated_class_names(reference_clip):
    model, _ = reference_clip
    sets = source_sets(model)
    pooled, classnames = multitask_training_set(["Colours", "Shapes"], sets, SOURCE_CLASSES)
    assert classnames == ["red", "green", "blue", "circle", "square"]
    assert pooled.domain_names == ("Colours", "Shapes")
    for domain, name in enumerate(pooled.domain_names):
        mine = pooled.domains == domain
        assert int(mine.sum()) == len(sets[name].labels) > 0  # every source contributes all of its images
        # each image's pooled label names the class its own label named in its own dataset
        assert [classnames[int(label)] for label in pooled.labels[mine]] == [
            SOURCE_CLASSES[name][int(label)] for label in sets[name].labels]
        assert torch.equal(pooled.view_inputs[mine], sets[name].view_inputs)
    assert sorted(set(pooled.labels.tolist())) == list(range(5))
    assert torch.equal(pooled.validation[1], torch.tensor([0, 1, 2, 3, 4]))
    # the source order decides the offsets
    _, reordered = multitask_training_set(["Shapes", "Colours"], sets, SOURCE_CLASSES)
    assert reordered == ["circle", "square", "red", "green", "blue"]


def test_pooling_refuses_an_empty_source_and_stray_labels(reference_clip):
    model, _ = reference_clip
    sets = source_sets(model)
    empty = TrainingSet(sets["Shapes"].view_inputs[:0], sets["Shapes"].labels[:0])
    with pytest.raises(ValueError, match="'Shapes' has no training image"):
        multitask_training_set(["Colours", "Shapes"], {**sets, "Shapes": empty}, SOURCE_CLASSES)
    stray = TrainingSet(sets["Shapes"].view_inputs, sets["Shapes"].labels + 2)
    with pytest.raises(ValueError, match="'Shapes': labels outside its 2 class names"):
        multitask_training_set(["Colours", "Shapes"], {**sets, "Shapes": stray}, SOURCE_CLASSES)


@pytest.mark.parametrize("method", ["mvlpt_coop", "mvlpt_vpt", "mvlpt_ivlp"])
def test_each_prompt_type_trains_on_the_pooled_sources_through_the_shared_loop(reference_clip, method):
    model, tokenizer = reference_clip
    classnames = [name for names in SOURCE_CLASSES.values() for name in names]
    classifier = build_classifier(model, tokenizer, method, DEPTHS[method], classnames, TEMPLATES)
    before = {name: tensor.clone() for name, tensor in classifier.trainable_state().items()}
    if classifier.__class__.__name__ == "CoOpClassifier":
        inputs = source_sets(model)
    else:  # vision prompts train on images: two tiny images per class
        generator = torch.Generator().manual_seed(0)
        inputs = {name: TrainingSet(torch.randn(2 * len(names), 3, 32, 32, generator=generator),
                                    torch.arange(len(names)).repeat_interleave(2), selection="last")
                  for name, names in SOURCE_CLASSES.items()}
    pooled, _ = multitask_training_set(list(SOURCE_CLASSES), inputs, SOURCE_CLASSES)
    history = train_prompts(classifier, pooled, schedule(steps=2, epochs=0))
    after = classifier.trainable_state()
    assert all(torch.isfinite(torch.tensor(loss)) for loss in history.epoch_losses)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert not any(p.requires_grad for p in model.parameters())  # the backbone stays frozen


def source_inputs(experiment: ExperimentConfig):
    """Stand-ins of two curated source datasets (ExperimentInputs reads only these fields here)."""
    inputs = []
    for name, names in SOURCE_CLASSES.items():
        index = pl.DataFrame({"relative_path": [f"{name}/{c}.png" for c in names], "label": list(range(len(names))),
                              "classname": names, "split": ["train"] * len(names),
                              "content_sha256": [f"{name}{c}" for c in names]})
        dataset = SimpleNamespace(name=name, template_groups=None, templates=TEMPLATES)
        inputs.append(SimpleNamespace(dataset=dataset, experiment=experiment, index=index, classnames=names,
                                      templates=TEMPLATES))
    return inputs


def train_three_seeds(reference_clip, tmp_path, monkeypatch) -> list:
    """The source stage of seeds 1-3 on the toy sources (fewshot_training_set replaced by the toy sets)."""
    model, tokenizer = reference_clip
    sets = source_sets(model)
    monkeypatch.setattr("models.experiments.training_sets.fewshot_training_set",
                        lambda inputs, workspace, backbone, labels: sets[inputs.dataset.name])
    backbone = SimpleNamespace(model=model, tokenizer=tokenizer, device="cpu", spec=SimpleNamespace(name="reference"),
                               weights_sha256="0" * 64)
    directories = []
    for seed in (1, 2, 3):
        experiment = ExperimentConfig(key=f"mvlptcoop-k4-s{seed}-source", method="mvlpt_coop", shots=4, seed=seed,
                                      parameters=COOP, optimization={"epochs": 2, "batch_size": 4,
                                                                     "learning_rate": 0.02, "warmup_epochs": 0},
                                      name="source", selection="last")
        trained = train_multitask_source(source_inputs(experiment), None, backbone)
        assert trained.config["sources"] == ["Colours", "Shapes"]
        assert trained.config["classnames"] == ["red", "green", "blue", "circle", "square"]
        directories.append(save_prompt_checkpoint(tmp_path / f"source-s{seed}", trained.classifier, trained.config))
    return directories


def test_target_starts_from_the_seed_averaged_source_prompt(reference_clip, tmp_path, monkeypatch):
    model, tokenizer = reference_clip
    directories = train_three_seeds(reference_clip, tmp_path, monkeypatch)
    from safetensors.torch import load_file

    seeds = [load_file(str(directory / "prompt_parameters.safetensors"))["context"] for directory in directories]
    assert not torch.equal(seeds[0], seeds[1])  # the seeds differ, so the average is not any one of them
    average = average_source_checkpoints(directories, tmp_path / "average")
    config = json.loads((average / "prompt_config.json").read_text())
    assert config["averaged_over"] == [f"mvlptcoop-k4-s{seed}-source" for seed in (1, 2, 3)]
    by_hand = (seeds[0] + seeds[1] + seeds[2]) / 3
    start = source_prompt(average, "mvlpt_coop", COOP)
    assert torch.allclose(start.state["context"], by_hand, atol=1e-7, rtol=0)

    # the target (other classes) holds exactly the average before its first step
    target = started_at(build_classifier(model, tokenizer, "mvlpt_coop", COOP, TARGET_CLASSES, TEMPLATES), start)
    assert torch.equal(target.context.detach(), start.state["context"])
    # and trains from it: the same steps as a classifier given the average by hand, not as one from "a photo of a"
    data = toy_set(model, 2, seed=7, with_validation=False)
    train_prompts(target, data, schedule())
    by_hand_start = build_classifier(model, tokenizer, "mvlpt_coop", COOP, TARGET_CLASSES, TEMPLATES)
    with torch.no_grad():
        by_hand_start.context.copy_(by_hand)
    train_prompts(by_hand_start, data, schedule())
    plain = build_classifier(model, tokenizer, "mvlpt_coop", COOP, TARGET_CLASSES, TEMPLATES)
    train_prompts(plain, data, schedule())
    assert torch.allclose(target.context, by_hand_start.context, atol=1e-6, rtol=0)
    assert not torch.allclose(target.context, plain.context, atol=1e-4)
    assert not torch.equal(target.context.detach(), start.state["context"])  # it moved


def test_a_source_of_another_prompt_is_refused(reference_clip, tmp_path, monkeypatch):
    model, tokenizer = reference_clip
    directories = train_three_seeds(reference_clip, tmp_path, monkeypatch)
    average = average_source_checkpoints(directories, tmp_path / "average")
    with pytest.raises(ValueError, match="trained as mvlpt_coop"):
        source_prompt(average, "mvlpt_vpt", {"prompt_depth": 2})
    with pytest.raises(FileNotFoundError, match="run the multitask source runs and their average first"):
        source_prompt(tmp_path / "nothing", "mvlpt_coop", COOP)
    # a prompt of another type, and a class-specific context of the source's 5 classes on a 2-class target
    vpt = build_classifier(model, tokenizer, "mvlpt_vpt", {"prompt_depth": 2}, TARGET_CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="does not fit VPTClassifier"):
        initialise_from_source(vpt, source_prompt(average, "mvlpt_coop", COOP).state)
    csc = {**COOP, "class_specific_context": True}
    source_csc = build_classifier(model, tokenizer, "mvlpt_coop", csc, ["a", "b", "c", "d", "e"], TEMPLATES)
    target_csc = build_classifier(model, tokenizer, "mvlpt_coop", csc, TARGET_CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="class-specific prompt cannot start a target"):
        initialise_from_source(target_csc, source_csc.trainable_state())


def test_averaging_refuses_prompts_of_different_types_or_shapes():
    with pytest.raises(ValueError, match="not the same prompt type"):
        average_prompt_states([{"context": torch.zeros(4, 8)}, {"vision_prompts.input_prompt": torch.zeros(4, 8)}])
    with pytest.raises(ValueError, match="differ in shape"):
        average_prompt_states([{"context": torch.zeros(4, 8)}, {"context": torch.zeros(2, 8)}])
    states = [{"context": torch.full((2, 3), float(value))} for value in (1, 2, 6)]
    assert torch.equal(average_prompt_states(states)["context"], torch.full((2, 3), 3.0))
