"""The CUDA path, on a GPU only (skipped without one; `bench/device_check.sh` runs it on a lent GPU machine).

test_device_placement.py shows on the `meta` device that no method leaves a tensor on the CPU; what it cannot show
is the arithmetic: bf16 autocast (models/precision.py) on real kernels. Here every method that trains by gradient
takes the same seeded steps on the CPU in fp32 and on the GPU under bf16 autocast, and the two must end where the
fp32 training does: finite losses close to the CPU's, prompts left on the GPU, and every class probability of the
toy images within 0.1 of fp32 (bf16 rounds, so equal bits are not expected). The pseudolabel rounds (GRIP, as the
pipeline runs them) go through the GPU the same way: the pool relabelled in one batched pass per round, results back
on the CPU.
"""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
import torch

from models.experiments import build_classifier
from models.limited_labels import round_zero_selection, train_keeping_best, train_with_pseudolabels
from models.prompting.methods import METHODS, get_method
from models.prompting.training import OptimizationConfig, predict_logits, predict_probabilities, train_prompt_parameters
from models.pseudolabels import get_strategy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a lent GPU machine)")

# The reference tiny CLIP has 2 layers per tower: the published prompt depths are cut to fit it.
SMALL_DEPTHS = {
    "maple": {"prompt_depth": 2},
    "vpt_deep": {"prompt_depth": 2},
    "ivlp": {"text_prompt_depth": 2, "vision_prompt_depth": 2},
    "promptsrc": {"text_prompt_depth": 2, "vision_prompt_depth": 2},
    # MoCoOp reads its template groups from the dataset (datasets.yaml); here, the method parameter
    "mocoop": {"template_groups": {"templates": ["a photo of a {}.", "a {}.", "the {}."], "groups": [1, 2]}},
}
CLASSNAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}."]
CONFIG = OptimizationConfig(epochs=6, batch_size=8, learning_rate=0.002, seed=1)


def toy_images(per_class: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    images = [colour.view(3, 1, 1) + 0.3 * torch.randn(3, 32, 32, generator=generator)
              for colour in colours for _ in range(per_class)]
    return torch.stack(images), torch.arange(3).repeat_interleave(per_class)


def gradient_methods() -> list[str]:
    return [name for name, spec in sorted(METHODS.items()) if spec.trains_prompts and not spec.adapts_from_pool]


def method_inputs(model: torch.nn.Module, method: str, images: torch.Tensor) -> torch.Tensor:
    if not get_method(method).frozen_image_encoder:
        return images
    with torch.no_grad():  # what the feature cache holds: fp32 features of the frozen image tower
        return model.encode_image(images.to(next(model.parameters()).device)).float().cpu()


@pytest.mark.parametrize("method", gradient_methods())
def test_every_method_trains_under_bf16_autocast_on_the_gpu_like_fp32_on_the_cpu(reference_clip, method):
    model, tokenizer = reference_clip
    images, labels = toy_images()
    runs = {}
    for device in ("cpu", "cuda"):
        clip = copy.deepcopy(model).to(device)
        classifier = build_classifier(clip, tokenizer, method, SMALL_DEPTHS.get(method, {}), CLASSNAMES, TEMPLATES)
        if not classifier.trained_by_gradient:
            pytest.skip(f"{method} is fitted in closed form")
        inputs = method_inputs(clip, method, images)
        history = train_prompt_parameters(classifier, inputs, labels, CONFIG, device=device)
        trainable = [p for p in classifier.parameters() if p.requires_grad]
        assert trainable and all(p.device.type == device for p in trainable), f"{method}: prompts left {device}"
        assert all(np.isfinite(history.epoch_losses)), f"{method} on {device}: losses {history.epoch_losses}"
        runs[device] = (history, predict_probabilities(classifier, inputs))
    cpu_history, cpu_probabilities = runs["cpu"]
    gpu_history, gpu_probabilities = runs["cuda"]
    # Class probabilities, not argmax agreement: a toy run that ends near-uniform (KgCoOp here: the largest
    # probability 0.37 of 3 classes) flips its argmax on any rounding, while broken arithmetic moves probabilities.
    difference = float((cpu_probabilities - gpu_probabilities).abs().max())
    assert difference < 0.1, f"{method}: bf16 on the GPU moves a class probability by {difference:.3f} from fp32"
    assert abs(gpu_history.epoch_losses[-1] - cpu_history.epoch_losses[-1]) < 0.15 * max(
        1.0, abs(cpu_history.epoch_losses[-1])), (cpu_history.epoch_losses, gpu_history.epoch_losses)


def test_grip_rounds_run_on_the_gpu_and_label_the_pool_like_the_cpu(reference_clip):
    model, tokenizer = reference_clip
    images, labels = toy_images(per_class=10, seed=3)
    paths = [f"pool/{i:03d}.png" for i in range(len(labels))]
    pool_rows = pl.DataFrame({"relative_path": paths, "label": labels.tolist()})
    strategy = get_strategy("grip")
    classes = tuple(range(len(CLASSNAMES)))
    outcomes = {}
    for device in ("cpu", "cuda"):
        clip = copy.deepcopy(model).to(device)
        features = method_inputs(clip, "coop", images)

        def build():
            return build_classifier(clip, tokenizer, "coop", {"context_init": "a photo of a"}, CLASSNAMES, TEMPLATES)

        def train(classifier, training_set, after_epoch, device=device):
            return train_prompt_parameters(classifier, training_set.view_inputs, training_set.labels,
                                           OptimizationConfig(epochs=3, batch_size=8, seed=1),
                                           training_set.sample_weights, device=device,
                                           on_epoch=None if after_epoch is None
                                           else lambda epoch, loss, accuracy: after_epoch(epoch))

        zero_shot = predict_probabilities(build().to(device), features).numpy().astype(np.float64)
        initial = round_zero_selection(strategy, 16, paths, zero_shot, classes)
        result = train_with_pseudolabels(
            build, strategy, 16, initial, (features[:0].unsqueeze(1), torch.zeros(0, dtype=torch.long)), None,
            features.unsqueeze(1), features, pool_rows, classes, train)
        assert len(result.rounds) == strategy.rounds
        assert result.classifier.logit_scale.device.type == device
        outcomes[device] = [r.selected.sort("relative_path") for r in result.rounds]
    for cpu_round, gpu_round in zip(outcomes["cpu"], outcomes["cuda"]):
        assert cpu_round.height == gpu_round.height  # K per round is the schedule's, on both devices
        joined = cpu_round.join(gpu_round, on="relative_path", how="inner", suffix="_gpu")
        same = (joined["pseudo_label"] == joined["pseudo_label_gpu"]).mean()
        assert joined.height >= 0.8 * cpu_round.height and same >= 0.9, (joined.height, cpu_round.height, same)


def test_keeping_the_best_epoch_reads_validation_on_the_gpu(reference_clip):
    model, tokenizer = reference_clip
    clip = copy.deepcopy(model).to("cuda")
    images, labels = toy_images(per_class=6, seed=5)
    features = method_inputs(clip, "coop", images)
    classifier = build_classifier(clip, tokenizer, "coop", {"context_init": "a photo of a"}, CLASSNAMES, TEMPLATES)
    epochs_seen = []

    def train(classifier, training_set, after_epoch):
        def on_epoch(epoch, loss, accuracy):
            epochs_seen.append(epoch)
            after_epoch(epoch)
        return train_prompt_parameters(classifier, training_set.view_inputs, training_set.labels,
                                       OptimizationConfig(epochs=4, batch_size=6, seed=1), device="cuda",
                                       on_epoch=on_epoch)

    from models.experiments import TrainingSet
    training_set = TrainingSet(features.unsqueeze(1), labels, None, {"labelled": len(labels)}, (features, labels))
    history, selected_epoch = train_keeping_best(classifier, training_set, (features, labels), train)
    assert epochs_seen == [1, 2, 3, 4] and len(history.epoch_losses) == 4
    assert selected_epoch is None or 1 <= selected_epoch <= 4
    assert predict_logits(classifier, features).device.type == "cpu"
