"""ImageNet's 1000 classes: a CoOp checkpoint trained on them evaluates on a 200-class subset with the subset's own
class names (transfer as CoOp's load_model does it: the learned context loaded, the frozen prefix/suffix rebuilt for
the new names), and one CoOp training step at 1000 classes on the ViT-B-16 architecture stays within the peak memory
bench/thousand_classes.py measured (bench/measured/thousand_classes.json)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from models.experiments import (CHECKPOINT_WEIGHTS, build_classifier, load_prompt_checkpoint,  # noqa: E402
                                save_prompt_checkpoint)
from models.prompting.text_passes import DEFAULT_TEXT_CHUNK_SIZE  # noqa: E402
from models.prompting.training import OptimizationConfig, predict_logits, train_prompt_parameters  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]
MEASURED = REPOSITORY / "bench" / "measured" / "thousand_classes.json"
TEMPLATES = ["a photo of a {}."]
SUBSET = list(range(3, 1000, 5))  # 200 classes spread over the 1000, not a prefix of them


def test_a_checkpoint_of_1000_classes_evaluates_on_a_200_class_subset_with_its_own_names(reference_clip, tmp_path):
    model, tokenizer = reference_clip
    classnames = list(IMAGENET_CLASSNAMES)
    trained = build_classifier(model, tokenizer, "coop", {}, classnames, TEMPLATES)  # shared context, 8 passes
    initial = trained.context.detach().clone()
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(16, model.text_projection.shape[1], generator=generator)
    labels = torch.randint(1000, (16,), generator=generator)
    train_prompt_parameters(trained, features, labels,
                            OptimizationConfig(epochs=2, batch_size=8, learning_rate=0.05, warmup_epochs=0))
    assert not torch.allclose(trained.context, initial), "training should move the context"
    directory = save_prompt_checkpoint(tmp_path / "coop", trained, {
        "method": "coop", "parameters": {}, "classnames": classnames, "templates": TEMPLATES, "config_hash": "test"})

    subset_names = [classnames[index] for index in SUBSET]
    loaded, _ = load_prompt_checkpoint(directory, model, tokenizer, classnames=subset_names)

    # Only the learned context travels (CoOp's load_model drops token_prefix/token_suffix from the state dict) ...
    assert set(load_file(directory / CHECKPOINT_WEIGHTS)) == {"context"}
    assert torch.equal(loaded.context, trained.context)
    # ... and the frozen pieces are the subset's own, as a classifier built for those names has them.
    fresh = build_classifier(model, tokenizer, "coop", {}, subset_names, TEMPLATES)
    assert loaded.classnames == subset_names
    assert torch.equal(loaded.pieces.token_ids, fresh.pieces.token_ids)
    assert torch.equal(loaded.pieces.prefix_embeddings, fresh.pieces.prefix_embeddings)
    assert torch.equal(loaded.pieces.suffix_embeddings, fresh.pieces.suffix_embeddings)
    assert loaded.pieces.name_token_counts == fresh.pieces.name_token_counts
    assert torch.equal(loaded.pieces.token_ids, trained.pieces.token_ids[SUBSET])
    assert not torch.equal(loaded.pieces.token_ids, trained.pieces.token_ids[:200])

    # A shared context scores each class on its own: the subset's logits are the 1000-class logits of its columns.
    subset_logits = predict_logits(loaded, features)
    assert subset_logits.shape == (16, 200)
    assert torch.allclose(subset_logits, predict_logits(trained, features)[:, SUBSET], atol=1e-5, rtol=0)


@pytest.mark.skipif(not MEASURED.exists(), reason=f"{MEASURED} not measured yet (python -m bench.thousand_classes)")
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak RSS is read from Linux's /proc")
def test_one_coop_step_at_1000_classes_stays_within_the_measured_peak(tmp_path):
    """The bench's test case (bench/measured/thousand_classes.json): ViT-B-16 with random weights, its text tower
    cut to its first block so that the step fits a minute on 2 cores (a 12-block step takes minutes), batch 2, one
    step of the training loop in a fresh process, with malloc set up as the bench's (a fixed mmap threshold, so the
    resident set follows the tensors); its peak RSS rise may exceed the bench's by the stated margin. Without
    chunking the same step needs several times the measured rise (the figure's unchunked_rise_mb)."""
    figure = json.loads(MEASURED.read_text())
    case = figure["case"]
    assert (case["method"], case["n_classes"], case["architecture"], case["chunked"]) == ("coop", 1000, "ViT-B-16",
                                                                                          True)
    assert case["text_chunk_size"] == DEFAULT_TEXT_CHUNK_SIZE, (
        "the figure was measured at another default text_chunk_size: re-run python -m bench.thousand_classes")
    result_path = tmp_path / "step.json"
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
                   **figure["allocator_environment"]}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.thousand_classes", "--child", json.dumps(case), "--result", str(result_path),
         "--no-weights-hash"], cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    step = json.loads(result_path.read_text())
    assert step["passes"] == math.ceil(1000 / DEFAULT_TEXT_CHUNK_SIZE)
    assert math.isfinite(step["loss"])
    assert step["rise_mb"] <= figure["allowed_rise_mb"], (
        f"one CoOp step at 1000 classes rose {step['rise_mb']:.0f} MB over its start; the bench measured "
        f"{figure['rise_mb']:.0f} MB (+{figure['margin']:.0%} allowed = {figure['allowed_rise_mb']:.0f} MB; "
        f"unchunked {figure['unchunked_rise_mb']} MB)")
