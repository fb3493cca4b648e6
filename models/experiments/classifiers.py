"""A method's classifier on the frozen backbone, and the check that it can run there before any work starts."""

from __future__ import annotations

from typing import Any

import torch

from models.prompting.methods import get_method, parse_method_parameters
from models.prompting.methods.registry import ClassifierContext, PromptedClassifier


def build_classifier(
    clip_model: torch.nn.Module,
    tokenizer,
    method: str,
    parameters: dict[str, Any],
    classnames: list[str],
    templates: list[str],
    text_cache=None,
    template_groups=None,
    dataset_classnames: list[str] | None = None,
    class_descriptions=None,
) -> PromptedClassifier:
    """The method's classifier on the frozen model; `text_cache` (models.prompting.text_cache.TextFeatureCache)
    serves the zero-shot template ensemble the method reads, encoded once per class names and templates.
    `template_groups` (the dataset's, datasets.yaml) and `dataset_classnames` (every class name of the dataset, where
    `classnames` are the ones trained on) reach the methods that read them (MoCoOp), as `class_descriptions` (the
    dataset's key phrases per class, models.prompting.class_descriptions) do (KAPT)."""
    spec = get_method(method)
    context = ClassifierContext(clip_model, tokenizer, classnames, templates, text_cache=text_cache,
                                template_groups=template_groups, dataset_classnames=dataset_classnames,
                                class_descriptions=class_descriptions)
    return spec.build(context, parse_method_parameters(method, parameters))


class MethodNotApplicableError(ValueError):
    """An experiment's method cannot run on the backbone in use (raised before any work starts)."""


def check_method_applies(backbone, method: str, parameters: dict[str, Any], classnames: list[str],
                         templates: list[str], template_groups=None) -> None:
    """Build the method's classifier on the loaded backbone and discard it, so that a method that cannot hook into
    it (vision prompts on a ResNet image tower, a prompt depth beyond the tower's layers, a parameter the method
    refuses) fails with the reason before augmentation, pseudolabelling or training spend any time."""
    try:
        build_classifier(backbone.model, backbone.tokenizer, method, parameters, classnames, templates,
                         template_groups=template_groups)
    except ValueError as error:  # UnsupportedBackboneError and parameter checks are ValueErrors
        raise MethodNotApplicableError(
            f"{method} cannot run on backbone {backbone.spec.name!r}: {error}") from error
