"""MoCoOp reproduces the authors' code on the reference tiny CLIP (expert text features, routing, logits, the three
loss terms and every gradient, per term and in total, vision LayerNorms included), and keeps its properties: what
learns and what stays frozen, the backbone untouched, the parsing and class-name choices it documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.template_groups import TemplateGroups, TemplateGroupsError  # noqa: E402
from models.prompting.training import OptimizationConfig, predict_logits, train_prompt_parameters  # noqa: E402
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
CASES_FILE = DATA / "mocoop_reference.json"
TENSORS_FILE = DATA / "mocoop_reference.safetensors"

pytestmark = pytest.mark.skipif(not (CASES_FILE.exists() and TENSORS_FILE.exists()),
                                reason="MoCoOp reference not vendored in tests/data")


@pytest.fixture(scope="module")
def reference():
    spec = json.loads(CASES_FILE.read_text())
    case = spec["cases"]["mocoop"]
    names = lambda key: [name.replace("_", " ") for name in spec[key]]  # noqa: E731 (as their prompts do)
    return case, names("classnames"), names("all_classnames"), load_file(TENSORS_FILE)


def build(model, tokenizer, classnames, dataset_classnames=None, groups=None, **overrides):
    context = ClassifierContext(model, tokenizer, list(classnames), templates=["a photo of a {}."],
                                template_groups=groups, dataset_classnames=dataset_classnames)
    return get_method("mocoop").build(context, parse_method_parameters("mocoop", overrides))


def build_reference(model, tokenizer, reference):
    """As the reference ran: the Caltech101 groups, their template parsing, t2t over all 7 class names (base
    training), and the stored (perturbed) prompt-learner parameters."""
    case, classnames, all_classnames, tensors = reference
    groups = TemplateGroups(case["templates"], case["groups"])
    classifier = build(model, tokenizer, classnames, all_classnames, groups, template_parsing="authors",
                       t2t_classnames="dataset")
    stored = {name[len("mocoop.param."):]: t for name, t in tensors.items() if name.startswith("mocoop.param.")}
    classifier.prompt_learner.load_state_dict(stored, strict=True)
    return classifier


def assert_gradient(actual, expected, name):
    """assert_gradient_matches, and for an expert without words before or after the class: an empty (0, D) gradient."""
    assert actual is not None and actual.shape == expected.shape, name
    if expected.numel():
        assert_gradient_matches(actual, expected, name)


def trainable(classifier) -> dict[str, torch.nn.Parameter]:
    """Their names: prompt-learner parameters without prefix, LayerNorms as image_encoder.transformer...."""
    return {name.removeprefix("prompt_learner."): p for name, p in classifier.named_parameters() if p.requires_grad}


def test_forward_losses_and_gradients_match_reference(reference_clip, reference):
    model, tokenizer = reference_clip
    case, _, _, tensors = reference
    classifier = build_reference(model, tokenizer, reference).train()
    images, labels = tensors["images"], tensors["labels"].long()
    expected = lambda what: tensors[f"mocoop.{what}"]  # noqa: E731
    assert classifier.n_words == list(zip(case["n_ctx_before"], case["n_ctx_after"]))
    assert classifier.template_groups.first_templates == case["expert_templates"]
    for expert, pieces in enumerate(classifier.experts):
        assert torch.equal(pieces.token_ids.int(), expected("tokenized_prompts_experts")[expert])
        ctx_before, ctx_after = classifier.prompt_learner.words(expert)
        assert torch.equal(pieces.assemble(ctx_before, ctx_after, 0, 5), expected("prompt_embeddings")[expert])
    t2t_experts = classifier._t2t_parts()[0]
    for expert, pieces in enumerate(t2t_experts):
        assert torch.equal(pieces.token_ids.int(), expected("tokenized_prompts_t2t")[expert])

    image_features = classifier.image_features(images)
    router_logits, indices, weights = classifier.route(image_features)
    close = lambda actual, what: torch.testing.assert_close(actual, expected(what), atol=1e-5, rtol=0)  # noqa: E731
    close(image_features, "image_features")
    close(router_logits, "router_logits")
    assert torch.equal(indices, expected("topk_indices"))
    close(weights, "topk_weights")
    close(classifier.expert_text_features(), "expert_text_features")
    close(classifier.t2t_expert_text_features(), "t2t_expert_text_features")
    close(classifier.grouped_prototypes(), "grouped_prototypes")
    close(classifier.text_gating(image_features, labels), "text_gating")

    terms = classifier.loss_terms(images, labels)
    close(terms["logits"], "logits")
    for term in ("ce", "t2t", "gate"):
        assert abs(terms[term].item() - case[f"loss_{term}"]) < 1e-5, term
    loss, logits = classifier.training_loss(images, labels)
    assert abs(loss.item() - case["loss"]) < 1e-5 * max(1.0, case["loss"])

    parameters = trainable(classifier)
    assert sorted(parameters) == sorted(name.removeprefix("prompt_learner.") for name in case["trainable"])
    loss.backward()
    for name, parameter in parameters.items():
        assert_gradient(parameter.grad, expected(f"grad.{name}"), f"grad.{name}")
    for term in ("ce", "t2t", "gate"):  # per-term gradients (of the unweighted term) of the prompt learner
        classifier.zero_grad(set_to_none=True)
        classifier.loss_terms(images, labels)[term].backward()
        for name, parameter in parameters.items():
            if not name.startswith("image_encoder."):
                stored = expected(f"grad_{term}.{name}")
                actual = parameter.grad if parameter.grad is not None else torch.zeros_like(stored)
                assert_gradient(actual, stored, f"grad_{term}.{name}")


def test_what_learns_and_what_stays_frozen(reference_clip, reference):
    model, tokenizer = reference_clip
    case, classnames, _, tensors = reference
    before = {name: p.clone() for name, p in model.state_dict().items()}
    classifier = build(model, tokenizer, classnames, groups=TemplateGroups(case["templates"], case["groups"]))
    state = classifier.trainable_state()
    n_blocks = len(model.visual.transformer.resblocks)
    layer_norms = {f"image_encoder.transformer.resblocks.{i}.{ln}.{p}" for i in range(n_blocks)
                   for ln in ("ln_1", "ln_2") for p in ("weight", "bias")}
    words = {f"prompt_learner.ctx_{side}_{e}" for e in range(5) for side in ("before", "after")}
    assert set(state) == layer_norms | words | {"prompt_learner.w", "prompt_learner.gate.weight",
                                                "prompt_learner.gate.bias"}
    # w is as wide as the projected embedding (32 here), not ln_final's width (64), and starts at zero
    assert state["prompt_learner.w"].shape == (1, model.text_projection.shape[1]) and not state["prompt_learner.w"].any()
    # default parsing learns the BPE tokens: "{} texture." has one learned word after the class name, not two
    assert classifier.n_words[0] == (0, 1) and state["prompt_learner.ctx_after_0"].shape == (1, 64)
    # the LayerNorms start as the backbone's, so the image features are frozen CLIP's
    with torch.no_grad():
        frozen = F.normalize(model.encode_image(tensors["images"]), dim=-1)
        torch.testing.assert_close(classifier.image_features(tensors["images"]), frozen, atol=1e-6, rtol=0)
    loss, _ = classifier.train().training_loss(tensors["images"], tensors["labels"].long())
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    groups = classifier.parameter_groups()
    assert [group["lr_scale"] for group in groups] == [1.0, 0.1]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for n, p in classifier.named_parameters()
                                                    if n.startswith("image_encoder.")}
    spec = get_method("mocoop")
    assert spec.trains_prompts and not spec.frozen_image_encoder and spec.transfers_to_other_classes()
    # without LayerNorm tuning the image tower stays frozen and nothing of it is learned
    plain = build(model, tokenizer, classnames, groups=TemplateGroups(case["templates"], case["groups"]),
                  finetune_vision_layer_norms=False)
    assert not any(name.startswith("image_encoder") for name in plain.trainable_state())


def test_t2t_classes_are_the_training_classes_unless_asked(reference_clip, reference):
    """Base-to-new: by default the t2t and gate terms see only the classes being trained on; the authors' choice (every
    class name of the dataset, new ones included) is a parameter."""
    model, tokenizer = reference_clip
    case, classnames, all_classnames, _ = reference
    groups = TemplateGroups(case["templates"], case["groups"])
    honest = build(model, tokenizer, classnames, all_classnames, groups)
    assert honest.t2t_classnames == classnames and honest.grouped_prototypes().shape[1] == 5
    authors = build(model, tokenizer, classnames, all_classnames, groups, t2t_classnames="dataset")
    assert authors.t2t_classnames == all_classnames and authors.grouped_prototypes().shape[1] == 7
    # training on classes 2 and 4 only: the gate's target indexes them among the dataset's names
    subset = build(model, tokenizer, [all_classnames[4], all_classnames[2]], all_classnames, groups,
                   t2t_classnames="dataset")
    assert subset.t2t_index_of_class.tolist() == [4, 2]


def test_learned_state_applies_to_new_classes(reference_clip, reference):
    model, tokenizer = reference_clip
    case, classnames, all_classnames, tensors = reference
    groups = TemplateGroups(case["templates"], case["groups"])
    trained = build(model, tokenizer, classnames, groups=groups)
    with torch.no_grad():
        for parameter in trained.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01)
    new = build(model, tokenizer, all_classnames[5:], groups=groups)
    new.load_state_dict(trained.trainable_state(), strict=False)
    assert predict_logits(new, tensors["images"]).shape == (6, 2)
    # evaluation encodes the experts once and re-encodes them when the parameters change
    first = predict_logits(new, tensors["images"])
    with torch.no_grad():
        new.prompt_learner.w.add_(0.5)
    assert not torch.equal(predict_logits(new, tensors["images"]), first)


def test_trains_through_the_training_loop(reference_clip, reference):
    model, tokenizer = reference_clip
    case, classnames, _, tensors = reference
    classifier = build(model, tokenizer, classnames, groups=TemplateGroups(case["templates"], case["groups"]))
    start = {name: p.detach().clone() for name, p in classifier.named_parameters() if p.requires_grad}
    history = train_prompt_parameters(classifier, tensors["images"], tensors["labels"].long(),
                                      OptimizationConfig(epochs=2, batch_size=4, learning_rate=0.01, warmup_epochs=1,
                                                         seed=1))
    assert history.steps == 4 and all(torch.isfinite(torch.tensor(history.epoch_losses)))
    moved = {name for name, p in classifier.named_parameters() if p.requires_grad and not torch.equal(p, start[name])}
    assert any(name.startswith("image_encoder.") for name in moved) and "prompt_learner.w" in moved


def test_missing_or_bad_template_groups_are_refused(reference_clip, reference):
    model, tokenizer = reference_clip
    _, classnames, _, _ = reference
    with pytest.raises(ValueError, match="mocoop needs the dataset's template groups"):
        build(model, tokenizer, classnames)
    with pytest.raises(ValueError, match="routes each image to 2 experts, but the template groups make 1"):
        build(model, tokenizer, classnames, groups=TemplateGroups(["a photo of a {}.", "a {}."], [2]))
    for templates, sizes, message in (
            (["a {}.", "the {}."], [1, 2], r"groups: the sizes \[1, 2\] add up to 3, but templates lists 2"),
            (["a {}.", "the {}."], [2, 0], r"groups\[1\]: a group size must be an integer >= 1, got 0"),
            (["a {}.", "the {}."], [3, -1], r"groups\[1\]: a group size must be an integer >= 1, got -1"),
            (["a {}.", "the"], [1, 1], r"templates\[1\]: expected a string with exactly one")):
        with pytest.raises(TemplateGroupsError, match=message):
            TemplateGroups(templates, sizes)
        with pytest.raises(ValueError, match="mocoop: template_groups." + message):
            parse_method_parameters("mocoop", {"template_groups": {"templates": templates, "groups": sizes}})
    for bad in ({"template_parsing": "words"}, {"t2t_classnames": "all"}, {"experts_per_image": 0}):
        with pytest.raises(ValueError, match="mocoop"):
            parse_method_parameters("mocoop", bad)


def test_a_checkpoint_keeps_the_groups_its_experts_were_learned_from(tmp_path, reference_clip, reference):
    """Evaluated on new classes with another dataset's templates, the checkpoint's experts are rebuilt from the
    template groups recorded in its config (the dataset's, passed at training), not from the target's."""
    from models.experiments import build_classifier, load_prompt_checkpoint, save_prompt_checkpoint

    model, tokenizer = reference_clip
    case, classnames, all_classnames, tensors = reference
    groups = TemplateGroups(case["templates"], case["groups"])
    classifier = build_classifier(model, tokenizer, "mocoop", {}, classnames, ["a photo of a {}."],
                                  template_groups=groups, dataset_classnames=all_classnames)
    with torch.no_grad():
        classifier.prompt_learner.w.add_(0.3)
    directory = save_prompt_checkpoint(tmp_path / "ckpt", classifier, {
        "method": "mocoop", "parameters": {}, "classnames": classnames, "templates": ["a photo of a {}."],
        "template_groups": groups.as_dict()})
    new_classes = all_classnames[5:]
    reloaded, config = load_prompt_checkpoint(directory, model, tokenizer, classnames=new_classes,
                                              templates=["a sketch of a {}."])
    assert reloaded.template_groups == groups and config["templates"] == ["a sketch of a {}."]
    direct = build_classifier(model, tokenizer, "mocoop", {}, new_classes, ["a photo of a {}."],
                              template_groups=groups)
    direct.load_state_dict(classifier.trainable_state(), strict=False)
    torch.testing.assert_close(predict_logits(reloaded, tensors["images"]), predict_logits(direct, tensors["images"]))
