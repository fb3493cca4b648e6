"""SPG's defining properties on the reference tiny CLIP (no reference tensors exist for it): stage I gives each source
domain the prompt of a CoOp run on that domain alone; G writes tanh-bounded contexts of the model's widths; D's real
pairs carry each image's own domain prompt; the LSGAN terms match a hand computation; the backbone stays frozen; the
held-out domain never enters training; the same seed gives the same numbers; and a few epochs run end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.experiments import TrainingSet, build_classifier, train_prompts
from models.experiments.multi_source import (DomainSplit, domains_of_relative_paths, held_out_accuracy,
                                             leave_one_domain_out, multi_source_training_set)
from models.prompting.methods import parse_method_parameters
from models.prompting.methods import spg as spg_module
from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.spg import (discriminator_losses, generator_loss, learning_rate_at_epoch)
from models.prompting.training import OptimizationConfig, train_prompt_parameters

CLASSNAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}."]
# small enough to run in seconds; the architecture keeps its published widths
MICRO = {"domain_prompt_epochs": 2, "domain_prompt_batch_size": 8}


def build(reference_clip, **overrides):
    model, tokenizer = reference_clip
    return build_classifier(model, tokenizer, "spg", {**MICRO, **overrides}, CLASSNAMES, TEMPLATES)


def schedule(**overrides) -> OptimizationConfig:
    settings = dict(optimizer="adamw", batch_size=8, learning_rate=2e-3, weight_decay=1e-4, epochs=2,
                    warmup_epochs=1, warmup_learning_rate=1e-5, seed=1)
    return OptimizationConfig(**{**settings, **overrides})


def two_domains(features: torch.Tensor) -> torch.Tensor:
    return torch.arange(features.shape[0]) % 2


def test_published_defaults():
    parameters = parse_method_parameters("spg", {})
    assert (parameters.latent_dim, parameters.generator_widths) == (100, (128, 256, 512, 1024))
    assert (parameters.discriminator_width, parameters.discriminator_layers) == (512, 3)
    assert (parameters.context_init, parameters.leaky_slope) == ("a photo of a", 0.2)


def test_stage_one_prompt_per_domain_equals_coop_on_that_domain(reference_clip, toy_features):
    features, labels = toy_features
    domains = two_domains(features)
    spg = build(reference_clip)
    prompts = spg.train_domain_prompts(features.unsqueeze(1), labels, domains, 2, seed=3)
    assert prompts.shape == (2, 4, reference_clip[0].token_embedding.weight.shape[1])
    model, tokenizer = reference_clip
    parameters = spg.parameters_used
    for domain in range(2):
        coop = build_classifier(model, tokenizer, "coop", vars(parameters.domain_prompt_method()), CLASSNAMES,
                                TEMPLATES)
        torch.manual_seed(3)
        chosen = domains == domain
        train_prompt_parameters(coop, features[chosen], labels[chosen], parameters.domain_prompt_schedule(3))
        assert torch.equal(prompts[domain], coop.context.detach()), f"domain {domain}"
    # each domain's prompt is learned from its own images: the two differ, and both moved from the initial words
    assert not torch.allclose(prompts[0], prompts[1])
    assert not torch.allclose(prompts[0], spg.pieces.initial_context.float())


def test_generator_writes_tanh_bounded_contexts_of_the_model_widths(reference_clip, toy_features):
    features, _ = toy_features
    spg = build(reference_clip)
    text_width, feature_dim = spg.text_tower.width, joint_embedding_dim(spg.text_tower)
    linears = [layer for layer in spg.generator.model if isinstance(layer, nn.Linear)]
    assert [layer.in_features for layer in linears][0] == 100 + feature_dim
    assert [layer.out_features for layer in linears] == [128, 256, 512, 1024, 4 * text_width]
    assert [layer.num_features for layer in spg.generator.model if isinstance(layer, nn.BatchNorm1d)] == [256, 512,
                                                                                                          1024]
    assert isinstance(spg.generator.model[-1], nn.Tanh)
    discriminator_linears = [layer for layer in spg.discriminator.model if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in discriminator_linears] == [
        (4 * text_width + feature_dim, 512), (512, 512), (512, 512), (512, 1)]
    contexts = spg.generated_contexts(features[:5] * 1e3, noise=torch.randn(5, 100) * 1e3)
    assert contexts.shape == (5, 4, text_width)
    assert contexts.abs().max() <= 1.0
    logits = spg.eval()(features[:5])
    assert logits.shape == (5, len(CLASSNAMES)) and torch.isfinite(logits).all()


def test_discriminator_sees_each_real_image_with_its_own_domain_prompt(reference_clip, toy_features):
    features, _ = toy_features
    spg = build(reference_clip)
    width = spg.text_tower.width
    spg.domain_prompts = torch.stack([torch.full((4, width), float(d + 1)) for d in range(3)])
    seen = []
    original = spg.discriminator.forward
    spg.discriminator.forward = lambda context, image: (seen.append((context.detach().clone(), image.clone())),
                                                        original(context, image))[1]
    real, fake = F.normalize(features[:4], dim=-1), F.normalize(features[4:8], dim=-1)
    domains = torch.tensor([2, 0, 1, 2])
    optimizers = (torch.optim.AdamW(spg.discriminator.parameters()), torch.optim.AdamW(spg.generator.parameters()))
    spg.adversarial_step(real, domains, fake, optimizers)
    (real_context, real_image), (fake_context, fake_image), (generator_context, generator_image) = seen
    assert torch.equal(real_context, spg.domain_prompts[domains]) and torch.equal(real_image, real)
    assert torch.equal(fake_image, fake) and torch.equal(generator_image, fake)
    assert fake_context.abs().max() <= 1.0 and not torch.equal(fake_context, real_context)


def test_lsgan_terms_on_a_hand_computed_case():
    real, fake = torch.tensor([[0.5], [1.5]]), torch.tensor([[0.2], [-0.4]])
    terms = discriminator_losses(real, fake)
    assert terms["discriminator_real"].item() == pytest.approx((0.25 + 0.25) / 2)
    assert terms["discriminator_fake"].item() == pytest.approx((0.04 + 0.16) / 2)
    assert terms["discriminator"].item() == pytest.approx(0.35)
    assert generator_loss(fake).item() == pytest.approx((0.64 + 1.96) / 2)


def test_clipping_groups_and_the_warm_up_schedule(reference_clip):
    spg = build(reference_clip)
    parameters = spg.parameters_used
    generator = {id(p): norm for p, norm in spg.generator.clipping_groups(parameters)}
    model = spg.generator.model
    assert generator[id(model[-2].bias)] == generator[id(model[9].bias)] == parameters.generator_max_norm_last_bias
    assert generator[id(model[3].bias)] == parameters.generator_max_norm_bias
    assert generator[id(model[9].weight)] == generator[id(model[0].weight)] == parameters.generator_max_norm_weight
    discriminator = {id(p): norm for p, norm in spg.discriminator.clipping_groups(parameters)}
    layers = spg.discriminator.model
    assert discriminator[id(layers[0].bias)] == discriminator[id(layers[8].weight)] == 5.0
    assert discriminator[id(layers[2].weight)] == parameters.discriminator_max_norm_weight
    config = OptimizationConfig(learning_rate=2e-3, epochs=70, warmup_epochs=4, warmup_learning_rate=1e-5)
    rates = [learning_rate_at_epoch(epoch, config) for epoch in range(70)]
    assert rates[:5] == pytest.approx([1e-5, 5e-4, 1e-3, 1.5e-3, 2e-3])
    assert rates[69] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 65 / 70)))


def test_the_backbone_stays_frozen_and_only_the_gan_trains(reference_clip, toy_features):
    features, labels = toy_features
    model = reference_clip[0]
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    spg = build(reference_clip)
    trainable = [name for name, p in spg.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith(("generator.", "discriminator.")) for name in trainable)
    generator_before = {name: t.clone() for name, t in spg.generator.state_dict().items()}
    spg.fit(TrainingSet(features.unsqueeze(1), labels, domains=two_domains(features)), schedule())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert not all(torch.equal(generator_before[n], t) for n, t in spg.generator.state_dict().items())


def shifted_domains(features: torch.Tensor, labels: torch.Tensor) -> dict[str, TrainingSet]:
    """Three 'domains' of the toy classes: the features shifted by a different offset each."""
    offsets = {"photo": 0.0, "sketch": 0.5, "noisy": -0.5}
    return {name: TrainingSet((features + offset).unsqueeze(1), labels) for name, offset in offsets.items()}


def test_the_held_out_domain_never_enters_training(reference_clip, toy_features, monkeypatch):
    features, labels = toy_features
    domains = shifted_domains(features, labels)
    split = leave_one_domain_out(list(domains), "noisy")
    assert split == DomainSplit("noisy", ("photo", "sketch"))
    with pytest.raises(ValueError, match="held-out domain 'noisy' was given a training set"):
        multi_source_training_set(split, domains)
    training_set = multi_source_training_set(split, {name: domains[name] for name in split.sources})
    assert training_set.domain_names == ("photo", "sketch")
    assert training_set.domains.tolist() == [0] * len(labels) + [1] * len(labels)
    held_out = F.normalize(domains["noisy"].view_inputs.squeeze(1), dim=-1)

    def never_held_out(inputs: torch.Tensor) -> None:
        rows = F.normalize(inputs.reshape(-1, inputs.shape[-1]).float(), dim=-1)
        assert (torch.cdist(rows, held_out).min(dim=1).values > 1e-4).all(), "a held-out image entered training"

    with pytest.raises(AssertionError, match="held-out image entered"):  # the watch sees one where there is one
        never_held_out(torch.cat([training_set.view_inputs[:3], domains["noisy"].view_inputs[:1]]))
    stage_one = spg_module.train_prompt_parameters

    def watched_stage_one(classifier, view_inputs, *args, **kwargs):
        never_held_out(view_inputs)
        return stage_one(classifier, view_inputs, *args, **kwargs)

    monkeypatch.setattr(spg_module, "train_prompt_parameters", watched_stage_one)
    spg = build(reference_clip)
    original = spg.discriminator.forward
    spg.discriminator.forward = lambda context, image: (never_held_out(image), original(context, image))[1]
    spg.fit(training_set, schedule())
    accuracy = held_out_accuracy(spg, domains["noisy"].view_inputs.squeeze(1), labels)
    assert 0.0 <= accuracy <= 1.0


def test_splits_that_leave_no_source_or_train_on_the_held_out_domain_are_refused():
    with pytest.raises(ValueError, match="leaves no source domain"):
        leave_one_domain_out(["Shapes"], "Shapes")
    with pytest.raises(ValueError, match="also a source"):
        DomainSplit("sketch", ("photo", "sketch"))
    with pytest.raises(ValueError, match="not in the family"):
        leave_one_domain_out(["photo", "sketch"], "noisy")


def test_domains_of_a_pooled_domainbed_split():
    domains, names = domains_of_relative_paths(["photo/dog/1.jpg", "art_painting/dog/2.jpg", "photo/cat/3.jpg"])
    assert names == ("art_painting", "photo") and domains.tolist() == [1, 0, 1]


def test_same_seed_same_numbers(reference_clip, toy_features):
    features, labels = toy_features
    training_set = TrainingSet(features.unsqueeze(1), labels, domains=two_domains(features))

    def run(seed: int):
        spg = build(reference_clip)
        torch.manual_seed(seed)
        history = spg.fit(training_set, schedule(seed=seed))
        return history, spg(features), spg.trainable_state()

    first, second, other = run(1), run(1), run(2)
    assert first[0].epoch_losses == second[0].epoch_losses
    assert torch.equal(first[1], second[1])
    assert all(torch.equal(first[2][name], second[2][name]) for name in first[2])
    assert not torch.equal(first[1], other[1])


def test_evaluation_noise_is_seeded_and_the_checkpoint_reloads(reference_clip, toy_features):
    features, labels = toy_features
    spg = build(reference_clip)
    spg.fit(TrainingSet(features.unsqueeze(1), labels), schedule(epochs=1))  # single-source: one domain prompt
    assert spg.domain_prompts.shape[0] == 1
    assert torch.equal(spg(features), spg(features))
    fresh = build(reference_clip).eval()
    result = fresh.load_state_dict(spg.trainable_state(), strict=False)
    assert not result.unexpected_keys
    assert torch.equal(fresh(features), spg(features))  # BatchNorm's running statistics travel with G
    other_noise = build(reference_clip, evaluation_noise_seed=5).eval()
    other_noise.load_state_dict(spg.trainable_state(), strict=False)
    assert not torch.equal(other_noise.generated_contexts(features), spg.generated_contexts(features))


def test_a_few_epochs_train_through_the_shared_entry_point(reference_clip, toy_features):
    features, labels = toy_features
    training_set = TrainingSet(torch.stack([features, features.flip(0)], dim=1), labels,
                               validation=(features, labels), domains=two_domains(features))
    spg = build(reference_clip)
    epochs = []
    history = train_prompts(spg, training_set, schedule(epochs=3), on_epoch=lambda e, loss, acc: epochs.append(e))
    assert epochs == [1, 2, 3] and history.steps == 9
    assert all(math.isfinite(loss) for loss in history.epoch_losses)
    assert 1 <= history.details["selected_epoch"] <= 3 and len(history.details["validation_accuracies"]) == 3
    assert not spg.training


def test_a_domainbed_few_shot_training_set_carries_each_images_domain(monkeypatch, tmp_path):
    """DomainBed's train split pools the source domains: fewshot_training_set labels each image with its path's
    first folder, in the order of the rows it trains on (restricted to the trained labels)."""
    from types import SimpleNamespace

    import polars as pl

    import models.storage
    from models.experiments import training_sets

    rows = pl.DataFrame({"relative_path": ["photo/dog/1.jpg", "cartoon/cat/2.jpg", "photo/cat/3.jpg",
                                           "sketch/dog/4.jpg"],
                         "label": [0, 1, 1, 2], "content_sha256": ["a", "b", "c", "d"]})
    monkeypatch.setattr(models.storage, "read_parquet_file", lambda path: None)
    monkeypatch.setattr(training_sets, "assemble_training_set",
                        lambda method, backbone, image_set, train_rows, *args, **kwargs: TrainingSet(
                            torch.zeros(train_rows.filter(pl.col("label").is_in(args[1])).height, 1, 4),
                            torch.tensor(train_rows.filter(pl.col("label").is_in(args[1]))["label"].to_list())))
    experiment = SimpleNamespace(key="spg-k16-s1", method="spg", view_recipe=None, selection_policy="last",
                                 augmentation=None)
    inputs = SimpleNamespace(dataset=SimpleNamespace(name="PACS_art_painting", source="domainbed"),
                             experiment=experiment, image_set=None,
                             fewshot_train=lambda fewshot, subset="train": rows)
    workspace = SimpleNamespace(fewshot_path=lambda name: tmp_path, feature_cache_dir=tmp_path)
    training_set = training_sets.fewshot_training_set(inputs, workspace, None, [0, 1])
    assert training_set.domain_names == ("cartoon", "photo")
    assert training_set.domains.tolist() == [1, 0, 1]
    inputs.dataset = SimpleNamespace(name="Shapes", source="embedded")  # a dataset of one domain: none
    assert training_sets.fewshot_training_set(inputs, workspace, None, [0, 1]).domains is None
