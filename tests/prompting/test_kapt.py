"""KAPT: learned context + the key phrases of the dataset's descriptions file (the template without one) + a
zero-initialised residual image head; the files are checked when the catalog loads."""

import pytest
import torch

from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog
from models.experiments import build_classifier, load_prompt_checkpoint, save_prompt_checkpoint
from models.prompting.class_descriptions import ClassDescriptions
from models.prompting.prompt_assembly import encode_template_texts
from models.prompting.training import OptimizationConfig, predict_probabilities, train_prompt_parameters
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: F401 (fixture)

CLASSNAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}."]
DESCRIPTIONS = ClassDescriptions.from_mapping(
    "descriptions/Toy.yaml", {"red": ["maroon", "orange"], "green": ["lime"], "blue": ["navy", "cyan", "teal"],
                              "yellow": ["gold"]})


def build(reference_clip, parameters=None, descriptions=DESCRIPTIONS, classnames=CLASSNAMES, method="kapt"):
    model, tokenizer = reference_clip
    return build_classifier(model, tokenizer, method, parameters or {}, classnames, TEMPLATES,
                            class_descriptions=descriptions)


def test_knowledge_prompt_tokens_are_the_files(reference_clip):
    model, tokenizer = reference_clip
    kapt = build(reference_clip)
    sentences = ["a photo of a red, maroon, orange.", "a photo of a green, lime.",
                 "a photo of a blue, navy, cyan, teal."]
    assert kapt.knowledge_source == "descriptions/Toy.yaml"
    assert torch.equal(kapt.pieces.token_ids, tokenizer(sentences))
    with torch.no_grad():  # the learned context starts at "a photo of a": the plain sentences' features
        plain = encode_template_texts(kapt.text_tower, tokenizer, sentences)
        assert (kapt.text_features() - plain).abs().max() <= 1e-5 * plain.abs().max()
    # a random context keeps the knowledge tokens after it
    random_context = build(reference_clip, {"context_init": None, "n_context": 3})
    assert torch.equal(random_context.pieces.token_ids, tokenizer([f"X X X {s[len('a photo of a '):]}"
                                                                   for s in sentences]))


def test_the_catalog_files_reach_the_prompt(reference_clip):
    _, tokenizer = reference_clip
    catalog = load_catalog(DEFAULT_CATALOG_DIR)  # not $PROMPTLAB_CATALOG, which the pipeline tests point elsewhere
    shapes = catalog.datasets["Shapes"].class_descriptions
    assert shapes is not None and shapes.file == "descriptions/Shapes.yaml"
    phrases = dict(shapes.phrases)
    kapt = build(reference_clip, descriptions=shapes, classnames=["circle", "star"])
    expected = [f"a photo of a {name}, {', '.join(phrases[name])}." for name in ("circle", "star")]
    assert torch.equal(kapt.pieces.token_ids, tokenizer(expected))


def test_without_a_file_the_template_stands_in(reference_clip):
    _, tokenizer = reference_clip
    kapt = build(reference_clip, descriptions=None)
    assert kapt.knowledge_source == "template"
    assert torch.equal(kapt.pieces.token_ids, tokenizer([f"a photo of a a photo of a {c}." for c in CLASSNAMES]))


def test_a_class_without_description_is_refused_before_training(reference_clip):
    with pytest.raises(ValueError, match=r"descriptions/Toy.yaml: class 'purple': no description"):
        build(reference_clip, classnames=["red", "purple"])


def test_zero_head_is_the_text_side_alone_and_only_the_method_trains(reference_clip, toy_features):
    model, _ = reference_clip
    features, labels = toy_features
    kapt = build(reference_clip)
    with torch.no_grad():
        assert torch.equal(kapt.adapted_image_features(features),
                           torch.nn.functional.normalize(features.float(), dim=-1))
        assert torch.allclose(kapt(features), kapt.logits_from(features, kapt.text_features()), atol=1e-5)
    assert set(kapt.trainable_state()) == {"context", "image_head.0.weight", "image_head.0.bias",
                                           "image_head.2.weight", "image_head.2.bias"}
    loss, _ = kapt.training_loss(features, labels)
    loss.backward()
    assert kapt.context.grad.abs().sum() > 0 and kapt.image_head[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    kapt.zero_grad()
    history = train_prompt_parameters(kapt, features, labels, OptimizationConfig(epochs=2, batch_size=8,
                                                                                 learning_rate=0.01))
    assert len(history.epoch_losses) == 2
    assert kapt.image_head[2].weight.abs().sum() > 0


def test_checkpoint_records_and_reuses_its_descriptions(tmp_path, reference_clip, toy_features):
    model, tokenizer = reference_clip
    features, labels = toy_features
    kapt = build(reference_clip)
    train_prompt_parameters(kapt, features, labels, OptimizationConfig(epochs=1, batch_size=8, learning_rate=0.01))
    config = {"method": "kapt", "parameters": {}, "classnames": CLASSNAMES, "templates": TEMPLATES,
              "class_descriptions": DESCRIPTIONS.as_dict(), "knowledge_prompt": DESCRIPTIONS.file}
    directory = save_prompt_checkpoint(tmp_path / "checkpoint", kapt, config)
    reloaded, _ = load_prompt_checkpoint(directory, model, tokenizer)
    assert reloaded.knowledge_source == DESCRIPTIONS.file
    assert torch.equal(predict_probabilities(reloaded, features), predict_probabilities(kapt, features))
    # new classes (base-to-new) read their phrases from the same file
    new, _ = load_prompt_checkpoint(directory, model, tokenizer, classnames=["yellow"])
    assert new.knowledge_texts == ["yellow, gold"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("nine"), r"descriptions/Digits.yaml: class 'nine': no description"),
    (lambda d: d.update({"eleven": ["cross"]}), r"descriptions/Digits.yaml: class 'eleven': not a class of the "),
    (lambda d: d.update({"zero": []}), r"descriptions/Digits.yaml: class 'zero': description: expected a non-empty "),
    (lambda d: d.update({"zero": ["oval", " "]}), r"descriptions/Digits.yaml: class 'zero': description: every key "),
    (lambda d: d.update({"zero": ["ring", "One"]}),
     r"descriptions/Digits.yaml: class 'zero': description: key phrase 'One' is the name of another class \('one'\)"),
])
def test_a_bad_descriptions_file_is_refused_when_the_catalog_loads(catalog_copy, change, message):
    edit(catalog_copy / "descriptions" / "Digits.yaml", change)
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy)


@pytest.mark.parametrize("descriptions, source", [(DESCRIPTIONS, "descriptions/Toy.yaml"), (None, "template")])
def test_the_experiment_checkpoint_config_says_which_knowledge_it_used(monkeypatch, descriptions, source):
    from types import SimpleNamespace

    import models.data.index
    import models.provenance
    from models.experiments.checkpoints import checkpoint_config

    monkeypatch.setattr(models.data.index, "dataset_fingerprint", lambda index: "data")
    monkeypatch.setattr(models.provenance, "library_code_version", lambda: "code")
    experiment = SimpleNamespace(method="kapt", parameters={}, protocol="few_shot", as_dict=lambda: {},
                                 config_hash="hash")
    inputs = SimpleNamespace(experiment=experiment, templates=TEMPLATES, index=None,
                             dataset=SimpleNamespace(name="Toy", template_groups=None,
                                                     class_descriptions=descriptions))
    backbone = SimpleNamespace(spec=SimpleNamespace(name="tiny"), weights_sha256="w")
    config = checkpoint_config(inputs, backbone, CLASSNAMES)
    assert config["knowledge_prompt"] == source
    assert ClassDescriptions.from_dict(config["class_descriptions"]) == descriptions
    experiment.method = "coop"  # a method without knowledge records nothing of it
    assert "knowledge_prompt" not in checkpoint_config(inputs, backbone, CLASSNAMES)
