"""A learning rate far too large makes the loss or the prompt parameters non-finite; training must stop there,
naming the experiment, epoch and step, so that no checkpoint of NaN (or 1e20) context vectors is ever written."""

import re

import pytest
import torch

from models.catalog import ExperimentConfig
from models.experiments import build_classifier, optimization_config, train_prompts, TrainingSet
from models.prompting.training import NonFiniteTrainingError, OptimizationConfig, train_prompt_parameters

CLASSNAMES = ["red", "green", "blue"]
MESSAGE = re.compile(r"^coop-k16-s1: .* became non-finite at epoch (\d+)/5, step (\d+) of the run .*no checkpoint")


@pytest.mark.parametrize("learning_rate", [1e30, 1e8])
def test_a_diverging_learning_rate_stops_training_naming_experiment_epoch_and_step(reference_clip, toy_features,
                                                                                 learning_rate):
    model, tokenizer = reference_clip
    features, labels = toy_features
    classifier = build_classifier(model, tokenizer, "coop", {"n_context": 4}, CLASSNAMES, ["a photo of a {}."])
    epochs_seen = []
    config = OptimizationConfig(epochs=5, batch_size=8, learning_rate=learning_rate, warmup_epochs=0,
                                experiment="coop-k16-s1")
    with pytest.raises(NonFiniteTrainingError) as raised:
        train_prompt_parameters(classifier, features, labels, config,
                                on_epoch=lambda epoch, loss, accuracy: epochs_seen.append(epoch))
    epoch, step = map(int, MESSAGE.match(str(raised.value)).groups())
    # 3 steps an epoch (24 images, batches of 8): the step lies in the named epoch, and that epoch never finished
    assert epochs_seen == list(range(1, epoch)) and 3 * (epoch - 1) < step <= 3 * epoch


def test_the_error_names_the_first_diverged_step():
    # loss w² with SGD at lr 1e18 from w = 1: w is -2e18, then 4e36 (finite), so the loss overflows at step 3
    class Exploding(torch.nn.Module):
        trained_by_gradient = True

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))
            self.logit_scale = torch.zeros(())
            self.steps = 0

        def backward_step(self, inputs, labels, weights, forward_context):
            self.steps += 1
            loss = (self.weight ** 2).sum()
            loss.backward()
            return loss, torch.zeros(len(labels), 2)

        def on_training_start(self, config):
            pass

        def parameter_groups(self):
            return [{"params": [self.weight], "lr_scale": 1.0}]

        def on_epoch_end(self, epoch, epochs):
            pass

        def on_training_end(self):
            pass

    model = Exploding()
    config = OptimizationConfig(epochs=3, batch_size=1, learning_rate=1e18, momentum=0.0, weight_decay=0.0,
                                warmup_epochs=0, experiment="toy")
    with pytest.raises(NonFiniteTrainingError, match=r"^toy: the loss became non-finite at epoch 1/3, step 3 "):
        train_prompt_parameters(model, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), config)
    assert model.steps == 3  # stopped at the step, not at the end of the epoch (4 steps) or of the run


def test_a_finite_run_is_untouched(reference_clip, toy_features):
    model, tokenizer = reference_clip
    features, labels = toy_features
    classifier = build_classifier(model, tokenizer, "coop", {"n_context": 4}, CLASSNAMES, ["a photo of a {}."])
    history = train_prompt_parameters(classifier, features, labels,
                                      OptimizationConfig(epochs=2, batch_size=8, learning_rate=0.002))
    assert len(history.epoch_losses) == 2 and all(torch.isfinite(torch.tensor(history.epoch_losses)))


def test_the_experiment_key_reaches_the_error_through_the_catalog_config(reference_clip, toy_features):
    model, tokenizer = reference_clip
    features, labels = toy_features
    experiment = ExperimentConfig(key="coop-k16-s1", method="coop", shots=16, seed=1, parameters={"n_context": 4},
                                  optimization={"epochs": 5, "batch_size": 8, "learning_rate": 1e30,
                                                "warmup_epochs": 0})
    optimization = optimization_config(experiment)
    classifier = build_classifier(model, tokenizer, "coop", {"n_context": 4}, CLASSNAMES, ["a photo of a {}."])
    with pytest.raises(NonFiniteTrainingError, match=MESSAGE):
        train_prompts(classifier, TrainingSet(features, labels), optimization)
