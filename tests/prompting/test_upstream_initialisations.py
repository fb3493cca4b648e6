"""Upstream initialisations end to end on a micro corpus and the reference tiny CLIP: GRAM's and PVP's prompts are
learned from a written corpus, stored all or nothing, and an experiment naming one starts from the stored state bit
for bit (GRAM's psi included); a stored prompt of another method or parameters is refused."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.catalog.initialisations import InitialisationEntry
from models.embedded.corpus import write_corpus
from models.experiments import build_classifier
from models.experiments.initialisations import (initialisation_prompt, save_initialisation, train_initialisation,
                                                upstream_data)
from models.experiments.multitask import started_at
from models.prompting.methods.gram import REGULATOR_PREFIX

COOP = {"n_context": 4, "context_init": None, "class_token_position": "end", "class_specific_context": False}
GRAM = InitialisationEntry("gram-coop", "gram_coop", 1, 120, COOP,
                           meta={"n_domains": 2, "n_way": 2, "outer_steps": 2, "tasks_per_step": 1})
PVP = InitialisationEntry("pvp-vpt", "pvp_vpt", 1, 60, {"n_tokens": 2},
                          optimization={"epochs": 2, "batch_size": 30, "learning_rate": 0.1, "warmup_epochs": 0})


def to_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    write_corpus(directory, num_pairs=120, seed=0)
    return directory


@pytest.fixture
def backbone(reference_clip):
    model, tokenizer = reference_clip
    return SimpleNamespace(model=model, tokenizer=tokenizer, device=torch.device("cpu"), preprocess_eval=to_tensor,
                           spec=SimpleNamespace(name="reference"), weights_sha256="0" * 64)


def test_upstream_data_labels_pairs_by_subject_caption_in_two_domains(corpus, backbone):
    data = upstream_data(corpus, backbone, GRAM)
    assert len(data.labels) == 120 and data.inputs.shape == (120, backbone.model.visual.output_dim)
    assert data.n_domains == 2 and set(data.domains.tolist()) == {0, 1}
    images = upstream_data(corpus, backbone, PVP)
    assert images.inputs.shape[:2] == (60, 3) and images.n_domains == 1


def test_fewer_pairs_than_the_corpus_holds_in_several_batches(corpus, backbone, monkeypatch):
    """corpus_pairs below the corpus' size, not a multiple of the encoding batch: the caption features stop at the
    same pair as the image features (the last batch once read captions past corpus_pairs)."""
    import dataclasses

    from models.experiments import initialisations

    monkeypatch.setattr(initialisations, "_BATCH", 64)
    data = upstream_data(corpus, backbone, dataclasses.replace(GRAM, corpus_pairs=100))
    assert len(data.labels) == 100 and data.inputs.shape[0] == 100 and data.domains.shape == (100,)


@pytest.mark.parametrize("entry, method, parameters, name", [
    (GRAM, "gram_coop", COOP, "context"), (PVP, "pvp_vpt", {"n_tokens": 2}, "vision_prompts.input_prompt")])
def test_an_experiment_starts_from_the_stored_initialisation_bit_for_bit(corpus, backbone, tmp_path, entry, method,
                                                                          parameters, name):
    state, record = train_initialisation(entry, corpus, backbone)
    directory = save_initialisation(tmp_path / "init", state, record)
    start = initialisation_prompt(directory, method, parameters)
    classifier = started_at(build_classifier(backbone.model, backbone.tokenizer, method, parameters,
                                             ["circle", "square"], ["a photo of a {}."]), start)
    assert torch.equal(dict(classifier.named_parameters())[name], state[name])
    if entry.kind == "gram":
        assert torch.equal(classifier.gradient_regulator.scale["context"], state[REGULATOR_PREFIX + "scale.context"])
        assert len(record["query_losses"]) == 2
    else:
        assert len(record["epoch_losses"]) == 2
    with pytest.raises(ValueError, match="was trained as"):
        initialisation_prompt(directory, method, {**parameters, "init_seed": 3})
