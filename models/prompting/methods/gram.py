"""GRAM, gradient-regulated meta-prompt learning (Li et al., ICCV 2023): a soft-prompt initialisation and a light
gradient-regulating function psi, both meta-learned on few-shot tasks mined from unlabelled image-caption data, then
ordinary prompt tuning on a downstream task from that initialisation, its gradients regulated by psi.

Implemented from the paper as summarised in METHODS-2.md section 6 (no public code; the paper was not at hand), not
from any authors' code. Equations implemented:
- inner step on a task's support set S: theta' = theta - a * psi(grad_theta L_S(theta));
- outer (meta) loss: L_Q(theta') on the task's query set Q, minimised over theta AND psi's parameters (MAML);
- downstream: the prompt starts at the meta-learned theta and every step's gradient g is replaced by psi(g).
Model-agnostic: the prompt is any prompt type's trainable tensors; registered here for CoOp (`gram_coop`, text
context) and shallow VPT (`gram_vpt`, image-input tokens). Loss: cross-entropy, upstream and downstream.

What the summary leaves open, and what this file chooses:
- Domains. The paper clusters CC3M hierarchically on both modalities; here `upstream.cross_modal_domains` runs flat
  k-means (n_domains, default 4, at least 2) on the frozen towers' concatenated, normalised image and caption features
  of the embedded corpus.
- Tasks. N-way K-shot classification among caption-derived labels (the corpus' subject captions, `upstream`): the
  classes a task draws are labels both of its domains hold; the support comes from one domain and the query from
  ANOTHER (query_domain "other", default: psi is to map the support's gradient to a direction that also lowers the
  loss on a shifted domain, the "domain-consistent direction"); "same" draws both from one domain (plain MAML).
- psi. An element-wise affine map per prompt tensor, psi(g) = s * g + b, initialised to the identity (s = 1, b = 0):
  the lightest function that can rescale, mute or bias each prompt coordinate's gradient.
- Order. Second order by default (the inner gradient keeps its graph, so the outer loss differentiates through it);
  `second_order: false` is first-order MAML (psi still learns: theta' depends on psi(g) with g held constant).
- Meta-optimiser: Adam on theta and psi, tasks averaged per outer step; a, N, K, the query size, the number of
  outer steps and the learning rates are chosen (GRAMMetaSchedule), none is known from the paper.
- Downstream psi. The summary has psi map "the raw fine-tuning gradient": downstream training applies the
  meta-learned psi to each step's gradient (`backward_step`); the optimiser and schedule are the prompt type's own.
  psi is frozen downstream and never in a checkpoint (inference does not use it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.prompting.methods.coop import CoOpClassifier, CoOpParameters
from models.prompting.methods.registry import MethodSpec, Paper, register_method, tested_property
from models.prompting.methods.vpt import VPTClassifier, VPTShallowParameters
from models.prompting.upstream import UpstreamData, prompt_logits

REGULATOR_PREFIX = "gradient_regulator."


@dataclass(frozen=True)
class GRAMMetaSchedule:
    """The upstream meta-training (every value chosen: the summary gives none)."""

    n_domains: int = 4
    n_way: int = 5
    support_shots: int = 1
    query_shots: int = 4
    query_domain: Literal["other", "same"] = "other"
    outer_steps: int = 200
    tasks_per_step: int = 4
    inner_learning_rate: float = 0.01
    outer_learning_rate: float = 0.002
    second_order: bool = True

    def __post_init__(self) -> None:
        if self.n_domains < 2:
            raise ValueError(f"n_domains: GRAM mines its tasks from at least 2 domains, got {self.n_domains}")
        for name in ("support_shots", "query_shots", "outer_steps", "tasks_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_way < 2:
            raise ValueError(f"n_way: a task tells at least 2 classes apart, got {self.n_way}")
        if self.query_domain not in ("other", "same"):
            raise ValueError(f"query_domain must be 'other' or 'same', got {self.query_domain!r}")
        if not (self.inner_learning_rate > 0 and self.outer_learning_rate > 0):
            raise ValueError("inner_learning_rate and outer_learning_rate must be positive")


def _key(name: str) -> str:
    return name.replace(".", "__")


class GradientRegulator(nn.Module):
    """psi: one element-wise affine map per prompt tensor, psi(g) = scale * g + shift, the identity at start."""

    def __init__(self, prompt: Mapping[str, torch.Tensor]):
        super().__init__()
        self.names = list(prompt)
        self.scale = nn.ParameterDict({_key(n): nn.Parameter(torch.ones_like(t.detach())) for n, t in prompt.items()})
        self.shift = nn.ParameterDict({_key(n): nn.Parameter(torch.zeros_like(t.detach())) for n, t in prompt.items()})

    def forward(self, name: str, gradient: torch.Tensor) -> torch.Tensor:
        return self.scale[_key(name)] * gradient + self.shift[_key(name)]


def regulated_step(prompt: Mapping[str, torch.Tensor], gradients: Mapping[str, torch.Tensor],
                   regulator: GradientRegulator, learning_rate: float) -> dict[str, torch.Tensor]:
    """GRAM's inner step: theta' = theta - a * psi(g), per prompt tensor."""
    return {name: theta - learning_rate * regulator(name, gradients[name]) for name, theta in prompt.items()}


class TaskSampler:
    """N-way K-shot tasks of caption labels: support from one domain, query from another (or the same)."""

    def __init__(self, data: UpstreamData, schedule: GRAMMetaSchedule, seed: int):
        self.data, self.schedule = data, schedule
        self.generator = torch.Generator().manual_seed(seed)
        labels_of = [set(data.labels[data.domains == d].tolist()) for d in range(data.n_domains)]
        if sum(1 for labels in labels_of if labels) < 2:
            raise ValueError(f"the upstream data holds {sum(1 for s in labels_of if s)} non-empty domains; GRAM "
                             "needs at least 2")
        pairs = [(s, q) for s in range(data.n_domains) for q in range(data.n_domains)
                 if (s != q) == (schedule.query_domain == "other")]
        self.pairs = [(s, q, sorted(labels_of[s] & labels_of[q])) for s, q in pairs]
        self.pairs = [(s, q, shared) for s, q, shared in self.pairs if len(shared) >= 2]
        if not self.pairs:
            raise ValueError("no support/query domain pair shares 2 caption labels: no task can be drawn (more "
                             "pairs or fewer domains)")

    def _draw(self, domain: int, label: int, count: int) -> torch.Tensor:
        rows = torch.nonzero((self.data.domains == domain) & (self.data.labels == label)).flatten()
        return rows[torch.randint(len(rows), (count,), generator=self.generator)]

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(classes (n,), support rows, support task labels, query rows, query task labels)."""
        s, q, shared = self.pairs[int(torch.randint(len(self.pairs), (1,), generator=self.generator))]
        n_way = min(self.schedule.n_way, len(shared))
        chosen = torch.tensor(shared)[torch.randperm(len(shared), generator=self.generator)[:n_way]]
        support = [self._draw(s, int(c), self.schedule.support_shots) for c in chosen]
        query = [self._draw(q, int(c), self.schedule.query_shots) for c in chosen]
        return (chosen, torch.cat(support), torch.arange(n_way).repeat_interleave(self.schedule.support_shots),
                torch.cat(query), torch.arange(n_way).repeat_interleave(self.schedule.query_shots))


def prompt_tensors(classifier: nn.Module) -> dict[str, nn.Parameter]:
    """The prompt: the classifier's trainable tensors (psi's own excluded)."""
    return {name: p for name, p in classifier.named_parameters()
            if p.requires_grad and not name.startswith(REGULATOR_PREFIX)}


@dataclass
class MetaTrainingResult:
    state: dict[str, torch.Tensor]  # the prompt and psi (REGULATOR_PREFIX), what a downstream classifier loads
    query_losses: list[float]  # the mean query loss after the inner step, per outer step
    support_losses: list[float]


def meta_train(classifier: nn.Module, data: UpstreamData, schedule: GRAMMetaSchedule, seed: int,
               device: str | torch.device = "cpu",
               on_step: Callable[[int, float], None] | None = None) -> MetaTrainingResult:
    """Meta-learn the classifier's prompt (in place) and a regulator psi on tasks of `data` (whose class names the
    classifier was built over); returns the prompt and psi as one state."""
    device = torch.device(device)
    classifier.to(device).train()
    prompt = prompt_tensors(classifier)
    if not prompt:
        raise ValueError(f"{type(classifier).__name__} has no prompt to meta-learn")
    regulator = GradientRegulator(prompt).to(device)
    optimizer = torch.optim.Adam(list(prompt.values()) + list(regulator.parameters()),
                                 lr=schedule.outer_learning_rate)
    sampler = TaskSampler(data, schedule, seed)
    inputs = data.inputs.to(device)
    query_losses, support_losses = [], []
    # second order differentiates the attention's backward, which only the math kernel implements
    with (sdpa_kernel([SDPBackend.MATH]) if schedule.second_order else contextlib.nullcontext()):
        _meta_steps(classifier, prompt, regulator, optimizer, sampler, inputs, schedule, query_losses,
                    support_losses, on_step, device)
    classifier.eval()
    state = {name: p.detach().cpu().clone() for name, p in prompt.items()}
    state.update({REGULATOR_PREFIX + name: t.detach().cpu().clone() for name, t in regulator.state_dict().items()})
    return MetaTrainingResult(state, query_losses, support_losses)


def _meta_steps(classifier, prompt, regulator, optimizer, sampler, inputs, schedule, query_losses, support_losses,
                on_step, device) -> None:
    for step in range(schedule.outer_steps):
        optimizer.zero_grad(set_to_none=True)
        step_query = step_support = 0.0
        for _ in range(schedule.tasks_per_step):
            classes, support, support_labels, query, query_labels = (t.to(device) for t in sampler.sample())
            support_loss = F.cross_entropy(prompt_logits(classifier, prompt, inputs[support], classes).float(),
                                           support_labels)
            gradients = torch.autograd.grad(support_loss, list(prompt.values()), create_graph=schedule.second_order)
            adapted = regulated_step(prompt, dict(zip(prompt, gradients)), regulator, schedule.inner_learning_rate)
            query_loss = F.cross_entropy(prompt_logits(classifier, adapted, inputs[query], classes).float(),
                                         query_labels)
            (query_loss / schedule.tasks_per_step).backward()
            step_query += float(query_loss.detach()) / schedule.tasks_per_step
            step_support += float(support_loss.detach()) / schedule.tasks_per_step
        optimizer.step()
        query_losses.append(step_query)
        support_losses.append(step_support)
        if on_step is not None:
            on_step(step + 1, step_query)


class GradientRegulated:
    """Mixin for a prompt classifier: holds a frozen psi (identity until `initialise_from_state` loads the
    meta-learned one) and applies it to the prompt's gradient after every backward."""

    def __init__(self, context, parameters):
        super().__init__(context, parameters)
        self.gradient_regulator = GradientRegulator(prompt_tensors(self)).requires_grad_(False)

    def backward_step(self, *args, **kwargs):
        loss, logits = super().backward_step(*args, **kwargs)
        with torch.no_grad():
            for name, parameter in prompt_tensors(self).items():
                if parameter.grad is not None:
                    parameter.grad.copy_(self.gradient_regulator(name, parameter.grad))
        return loss, logits

    def initialise_from_state(self, state: Mapping[str, torch.Tensor]):
        """Load a meta-learned state: the prompt (mvlpt.initialise_from_source's checks) and psi (all its tensors)."""
        from models.prompting.methods.mvlpt import initialise_from_source

        regulator = {n[len(REGULATOR_PREFIX):]: t for n, t in state.items() if n.startswith(REGULATOR_PREFIX)}
        initialise_from_source(self, {n: t for n, t in state.items() if not n.startswith(REGULATOR_PREFIX)})
        own = self.gradient_regulator.state_dict()
        if sorted(regulator) != sorted(own):
            raise ValueError(f"the GRAM state's psi holds {sorted(regulator)}, this prompt's {sorted(own)}")
        self.gradient_regulator.load_state_dict({n: t.to(own[n].device, own[n].dtype) for n, t in regulator.items()})
        return self


class GRAMCoOpClassifier(GradientRegulated, CoOpClassifier):
    pass


class GRAMVPTClassifier(GradientRegulated, VPTClassifier):
    pass


@dataclass(frozen=True)
class GRAMCoOpParameters(CoOpParameters):
    """CoOp's defaults (methods.yaml: chosen, the summary names none for GRAM's CoOp)."""


@dataclass(frozen=True)
class GRAMVPTParameters(VPTShallowParameters):
    """Shallow VPT's defaults (chosen likewise)."""


_PAPER = Paper("Li et al.", "Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language Models",
               "ICCV 2023", "https://arxiv.org/abs/2303.06571")
for _name, _parameters, _build, _frozen, _hooks, _hook_points in (
    ("gram_coop", GRAMCoOpParameters, GRAMCoOpClassifier, True,
     "text tower input: CoOp context meta-learned upstream; downstream gradients through the learned psi",
     ("text input", "gradient")),
    ("gram_vpt", GRAMVPTParameters, GRAMVPTClassifier, False,
     "vision tower input: shallow VPT tokens meta-learned upstream; downstream gradients through the learned psi",
     ("image input", "gradient")),
):
    register_method(MethodSpec(
        name=_name,
        parameters_type=_parameters,
        build=_build,
        trains_prompts=True,
        frozen_image_encoder=_frozen,
        hooks=_hooks,
        description="GRAM: prompt initialisation and gradient-regulating function meta-learned (MAML) on tasks "
                    "mined from the image-caption corpus; downstream cross-entropy with regulated gradients.",
        class_specific=lambda parameters: getattr(parameters, "class_specific_context", False),
        paper=_PAPER,
        hook_points=_hook_points,
        selection_note="The paper's downstream selection is not in the summary; as CoOp's Dassl scripts, the last "
                       "epoch.",
        verification=tested_property(
            "The inner step equals theta - a*psi(g) on a hand case, psi leaves the identity after meta-training, and "
            "a downstream prompt starts bit for bit at the stored meta-learned state.",
            "tests/prompting/test_gram.py::test_inner_step_is_theta_minus_a_psi_of_the_gradient"),
    ))
