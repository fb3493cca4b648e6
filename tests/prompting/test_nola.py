"""NoLA: no authors' reference tensors exist, so its defining properties: no label reaches it, the top-k selection
with k's formula and the fallback, a frozen encoder (refused when not on this machine), the student's head at the CDE
weights, the label-smoothing loss, determinism, and a short fit on micro data."""

import json
import math
from types import SimpleNamespace

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from models.experiments import (MethodNotApplicableError, TrainingSet, build_classifier, check_method_applies,
                                load_prompt_checkpoint, save_prompt_checkpoint, train_prompts)
from models.limited_labels import ExperimentRows, LimitedLabelInputs, train_limited_label_experiment
from models.prompting.frozen_encoders import EncoderUnavailableError
from models.prompting.methods import parse_method_parameters
from models.prompting.methods.nola import (examples_per_class, label_smoothing_cross_entropy,
                                           select_top_k_with_fallback)
from models.prompting.training import OptimizationConfig

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tests/conftest.py

CLASSNAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}.", "a {} thing."]
# The authors' student schedule (methods.yaml) shortened: AdamW, constant rate, 2 epochs.
OPTIMIZATION = OptimizationConfig(epochs=2, batch_size=8, learning_rate=0.004, weight_decay=0.01, optimizer="adamw",
                                  warmup_epochs=0, seed=1)
SHORT = {"labeller_epochs": 3, "min_per_class": 3}


def build(reference_clip, **parameters):
    model, tokenizer = reference_clip
    return build_classifier(model, tokenizer, "nola", {**SHORT, **parameters}, CLASSNAMES, TEMPLATES)


def colour_pool(per_class=6, seed=0):
    """(N, 2, 3, 32, 32) images of three colours (view 1 the mirrored image) and their hidden labels."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    labels = torch.arange(3).repeat_interleave(per_class)
    images = colours[labels].view(-1, 3, 1, 1) + 0.4 * torch.randn(len(labels), 3, 32, 32, generator=generator)
    return torch.stack([images, images.flip(-1)], dim=1), labels


def unlabelled_set(pool, labelled=None, labels=None):
    if labelled is None:
        labelled, labels = pool[:0], torch.empty(0, dtype=torch.long)
    return TrainingSet(labelled, labels, unlabelled=pool)


def states_equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_no_label_reaches_the_labeller_or_the_student(reference_clip):
    """The pool's hidden labels (in its rows) and the labelled rows' labels scrambled: bit-identical labeller and
    student, through the limited-label path a ul experiment takes."""
    pool, hidden = colour_pool()
    labelled, labelled_labels = pool[:4], hidden[:4]
    paths = [f"img{i}.png" for i in range(len(hidden))]

    def run(pool_labels, given_labels):
        rows = ExperimentRows(labelled=pl.DataFrame({"relative_path": paths[:4], "label": given_labels.tolist()}),
                              validation=pl.DataFrame({"relative_path": [], "label": []}),
                              pool=pl.DataFrame({"relative_path": paths, "label": pool_labels.tolist()}),
                              seen_labels=None, pseudolabel_classes=(0, 1, 2))
        inputs = LimitedLabelInputs((labelled, given_labels), None, pool, pool[:, 0])
        experiment = SimpleNamespace(where="nola-ul-s1", method="nola", pseudolabels=None)
        result = train_limited_label_experiment(
            experiment, True, lambda: build(reference_clip), inputs, rows, None,
            lambda classifier, training_set, after_epoch: train_prompts(classifier, training_set, OPTIMIZATION))
        return result.classifier

    generator = torch.Generator().manual_seed(5)
    truthful = run(hidden, labelled_labels)
    scrambled = run(hidden[torch.randperm(len(hidden), generator=generator)], torch.tensor([2, 0, 1, 1]))
    assert states_equal(truthful.last_labeller.head.state_dict(), scrambled.last_labeller.head.state_dict())
    assert torch.equal(truthful.last_labeller.pool_labels, scrambled.last_labeller.pool_labels)
    assert states_equal(truthful.trainable_state(), scrambled.trainable_state())
    # and the labelled part is not read at all: the same fit without it
    alone = build(reference_clip)
    train_prompts(alone, unlabelled_set(pool), OPTIMIZATION)
    assert states_equal(truthful.trainable_state(), alone.trainable_state())


def test_examples_per_class_is_the_authors_find_k():
    # k = max(16, floor(0.2 N / C))
    assert examples_per_class(100, 10) == 16
    assert examples_per_class(849, 10) == 16
    assert examples_per_class(850, 10) == 17
    assert examples_per_class(5000, 10) == 100


def micro_probabilities():
    # rows: first / second / third choice
    return torch.tensor([
        [0.70, 0.20, 0.10, 0.00],  # 0 / 1 / 2
        [0.60, 0.30, 0.10, 0.00],  # 0 / 1 / 2
        [0.50, 0.30, 0.15, 0.05],  # 0 / 1 / 2
        [0.10, 0.80, 0.06, 0.04],  # 1 / 0 / 2
        [0.20, 0.10, 0.00, 0.70],  # 3 / 0 / 1
        [0.30, 0.10, 0.05, 0.55],  # 3 / 0 / 1
    ])


def test_top_k_per_class_with_the_third_choice_fallback():
    selection = select_top_k_with_fallback(micro_probabilities(), per_class=2)
    # class 0: rows 0, 1 (the two highest first probabilities; row 2 is third); class 1: row 3 only; class 2 is
    # nobody's first or second choice: by third probability rows 2 (0.15) and 0 (0.10, before row 1 at 0.10), row 0
    # already class 0's, so only row 2; class 3: rows 4, 5.
    assert selection.indices.tolist() == [0, 1, 3, 2, 4, 5]
    assert selection.labels.tolist() == [0, 0, 1, 2, 3, 3]
    assert selection.choice == [1, 1, 3, 1]
    assert selection.counts(4) == [2, 1, 1, 2]


def test_second_choice_fallback_and_a_class_left_empty():
    probabilities = micro_probabilities()
    probabilities[1] = torch.tensor([0.60, 0.10, 0.30, 0.00])  # row 1's second choice is now class 2
    selection = select_top_k_with_fallback(probabilities, per_class=2)
    # class 2 falls back to its second choosers: row 1 only, already class 0's (picked first): dropped.
    assert selection.choice == [1, 1, 2, 1]
    assert selection.labels.tolist() == [0, 0, 1, 3, 3]
    # with only first and second choices, class 2 of the original case has no image at all
    empty = select_top_k_with_fallback(micro_probabilities(), per_class=2, choices=2)
    assert empty.choice == [1, 1, 0, 1]
    assert 2 not in empty.labels.tolist()


def test_the_backbone_encoder_is_frozen_and_untouched(reference_clip):
    model, _ = reference_clip
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    classifier = build(reference_clip)
    pool, _ = colour_pool()
    train_prompts(classifier, unlabelled_set(pool), OPTIMIZATION)
    encoder = classifier.last_labeller.encoder.model
    assert encoder is model.visual
    assert not any(parameter.requires_grad for parameter in encoder.parameters())
    assert states_equal(before, model.state_dict())
    assert classifier.last_labeller.encoder.describe()["name"] == "backbone"


def test_a_local_timm_checkpoint_is_a_frozen_encoder(reference_clip, tmp_path):
    timm = pytest.importorskip("timm")
    checkpoint = tmp_path / "test_vit.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict(), checkpoint)
    classifier = build(reference_clip, labeller_encoder=f"timm:test_vit:{checkpoint}")
    pool, _ = colour_pool(per_class=3)
    history = train_prompts(classifier, unlabelled_set(pool), OptimizationConfig(
        epochs=1, batch_size=8, learning_rate=0.004, weight_decay=0.01, optimizer="adamw", warmup_epochs=0))
    encoder = classifier.last_labeller.encoder.model
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert states_equal(torch.load(checkpoint), encoder.state_dict())
    assert classifier.last_labeller.head[0].in_features == encoder.num_features
    recorded = history.details["labeller_encoder"]
    assert recorded["name"] == f"timm:test_vit:{checkpoint}" and recorded["feature_width"] == encoder.num_features


def test_an_encoder_missing_offline_is_refused_before_training(reference_clip, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    model, tokenizer = reference_clip
    with pytest.raises(EncoderUnavailableError) as refused:
        build(reference_clip, labeller_encoder="timm:vit_base_patch16_224.dino")
    assert "vit_base_patch16_224.dino" in str(refused.value) and str(cache) in str(refused.value)
    backbone = SimpleNamespace(model=model, tokenizer=tokenizer, spec=SimpleNamespace(name="tiny"))
    with pytest.raises(MethodNotApplicableError, match="not in the cache folder"):
        check_method_applies(backbone, "nola", {"labeller_encoder": "timm:vit_base_patch16_224.dino"}, CLASSNAMES,
                             TEMPLATES)
    with pytest.raises(EncoderUnavailableError, match="does not exist"):
        build(reference_clip, labeller_encoder=f"timm:test_vit:{tmp_path / 'missing.pth'}")
    assert not any(tmp_path.iterdir()), "nothing is written (no download, no cache folder)"
    with pytest.raises(ValueError, match="is not 'backbone'"):
        parse_method_parameters("nola", {"labeller_encoder": "dino_vitb16"})


def test_the_head_starts_at_the_cde_weights_and_zero_tokens_predict_as_the_cde_classifier(reference_clip):
    """Identity at initialisation: head = W_cde = normalise(template ensemble); with zero VPT tokens the student's
    logits are f(x) W_cde^T for the frozen tower's raw feature f, i.e. ||f|| / s times the zero-shot CDE logits."""
    model, tokenizer = reference_clip
    classifier = build(reference_clip, n_tokens=0)
    ensemble = build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, TEMPLATES).class_text_features
    assert torch.allclose(classifier.head.weight, F.normalize(ensemble.float(), dim=-1), atol=1e-6)
    assert torch.equal(classifier.head.weight, classifier.cde_weights)
    images = colour_pool()[0][:, 0]
    with torch.no_grad():
        raw = model.encode_image(images).float()
        student = classifier(images)
    assert torch.allclose(student, raw @ classifier.cde_weights.t(), atol=1e-5)
    zero_shot = classifier.zero_shot_logits(images)
    assert torch.allclose(student, raw.norm(dim=-1, keepdim=True) / classifier.logit_scale * zero_shot, atol=1e-5)
    assert torch.equal(student.argmax(1), zero_shot.argmax(1))


def test_descriptions_and_templates_are_averaged_then_renormalised(reference_clip, tmp_path):
    from models.prompting.prompt_assembly import encode_template_texts

    model, tokenizer = reference_clip
    descriptions = {name: [f"a {name} object", f"something that is {name}", f"{name} colour"] for name in CLASSNAMES}
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(descriptions))
    classifier = build(reference_clip, class_descriptions=str(path))
    text_tower = classifier.text_tower
    for index, name in enumerate(CLASSNAMES):
        texts = descriptions[name] + [template.format(name) for template in TEMPLATES]
        with torch.no_grad():
            features = F.normalize(encode_template_texts(text_tower, tokenizer, texts).float(), dim=-1)
        assert torch.allclose(classifier.cde_weights[index], F.normalize(features.mean(0), dim=0), atol=1e-6)
    path.write_text(json.dumps({"red": ["a red object"]}))
    with pytest.raises(ValueError, match="no descriptions for class"):
        build(reference_clip, class_descriptions=str(path))


def test_label_smoothing_cross_entropy_on_a_micro_case():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    targets = torch.tensor([0, 2])
    expected = 0.0
    for row, target in zip(logits.tolist(), targets.tolist()):
        log_norm = math.log(sum(math.exp(value) for value in row))
        negative_log = [log_norm - value for value in row]
        expected += 0.9 * negative_log[target] + 0.1 * sum(negative_log) / 3
    expected /= 2
    assert label_smoothing_cross_entropy(logits, targets, 0.1).item() == pytest.approx(expected, abs=1e-6)
    assert label_smoothing_cross_entropy(logits, targets, 0.0).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), abs=1e-7)


def test_weight_decay_groups_exempt_biases_and_optionally_layer_norm_weights(reference_clip):
    classifier = build(reference_clip)
    names = {id(p): n for n, p in classifier.named_parameters()}
    decayed, exempt = ([names[id(p)] for p in group["params"]] for group in classifier.parameter_groups())
    assert all(name.endswith("bias") for name in exempt) and exempt
    assert {"head.weight", "vision_prompts.input_prompt", "layer_norms.ln_pre.weight"} <= set(decayed)
    intent = build(reference_clip, decay_layer_norm_weights=False)
    names = {id(p): n for n, p in intent.named_parameters()}
    decayed = [names[id(p)] for p in intent.parameter_groups()[0]["params"]]
    assert sorted(decayed) == ["head.weight", "vision_prompts.input_prompt"]


def test_same_seed_same_numbers(reference_clip):
    pool, _ = colour_pool()
    runs = []
    for seed in (1, 1, 2):
        classifier = build(reference_clip)
        optimization = OptimizationConfig(**{**OPTIMIZATION.__dict__, "seed": seed})
        history = train_prompts(classifier, unlabelled_set(pool), optimization)
        runs.append((classifier.trainable_state(), classifier.last_labeller.head.state_dict(), history.epoch_losses))
    assert states_equal(runs[0][0], runs[1][0]) and states_equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]
    assert not states_equal(runs[0][0], runs[2][0])


def test_a_short_fit_on_micro_data_trains_the_student_and_reloads(reference_clip, tmp_path):
    model, tokenizer = reference_clip
    pool, hidden = colour_pool()
    classifier = build(reference_clip)
    initial = {name: tensor.clone() for name, tensor in classifier.trainable_state().items()}
    history = train_prompts(classifier, unlabelled_set(pool), OptimizationConfig(
        **{**OPTIMIZATION.__dict__, "epochs": 3}))
    assert len(history.epoch_losses) == 3 and all(math.isfinite(loss) for loss in history.epoch_losses)
    assert history.steps == 3 * math.ceil(len(hidden) / OPTIMIZATION.batch_size)
    trained = classifier.trainable_state()
    assert all(not torch.equal(initial[name], trained[name]) for name in ("head.weight", "vision_prompts.input_prompt",
                                                                         "layer_norms.ln_post.weight"))
    details = history.details
    assert details["examples_per_class"] == 3 and sum(details["labeller_examples_by_class"]) <= 9
    assert details["labeller_encoder"]["name"] == "backbone" and details["model_selection"] == "last_epoch"
    assert len(details["labeller_epoch_losses"]) == 3
    folder = save_prompt_checkpoint(tmp_path / "nola", classifier, {"method": "nola", "parameters": SHORT,
                                                                    "classnames": CLASSNAMES, "templates": TEMPLATES})
    reloaded, _ = load_prompt_checkpoint(folder, model, tokenizer)
    images = pool[:, 0]
    with torch.no_grad():
        assert torch.allclose(reloaded(images), classifier(images), atol=1e-6)
