"""MoCoOp, mixture of prompts (Du, Niu & Zhao, arXiv 2409.12011; code dyabel/mocoop at 04b5d2a).

Hooks. Text input: the dataset's hand-crafted templates come in consecutive groups (datasets.yaml `template_groups`,
the authors' per-dataset PROMPTS and GROUPS; or this method's `template_groups` parameter); each group is one expert,
a soft prompt built from the group's first template whose words before and after the class name are learned
(`prompt_learner.ctx_before_e`, `ctx_after_e`, initialised from the words' token embeddings). Feature space: a router
`prompt_learner.gate` = Linear(embedding width -> experts) on the normalised image feature picks the top 2 experts
per image; their normalised text features are mixed with the softmax of the two router logits (the mixture is not
re-normalised); a correction vector `prompt_learner.w` (1 x embedding width) is added to every expert's projected text
feature before normalisation. Image layers: ln_1 and ln_2 of every vision block are fine-tuned (FINETUNE_VIT_LN), as
copies held by the classifier (models/prompting/layer_norm_tuning.py), at 0.1 x the learning rate after warm-up.
Logits: logit_scale.exp() * image . mixture.

Loss = CE + text_loss_weight * t2t + gate_loss_weight * gate, with
- t2t: every expert's class features (prompts ending in '.') against the grouped prototypes, i.e. for each group the
  mean of its templates' normalised hand-crafted text features, normalised; logits = expert_e . prototypes_e (no
  temperature), cross-entropy over experts x classes, the target being the class itself;
- gate: cross-entropy of the router logits against the soft target softmax(text_gating), text_gating = image .
  prototypes of the image's class per group, with +10 on its two largest entries. As in their code the target is not
  detached, so this term also reaches the vision LayerNorms through the image feature.

Published defaults (their base-to-new config vit_b16_c4_ep50_batch32_..._lr32 with the dataset YAMLs): text loss
weight 5, gate loss weight 1, correction on, LayerNorms tuned; SGD lr 0.032, batch 32, 50 epochs, 5 warm-up epochs
at 1e-5, last epoch tested (methods.yaml). None of their YAMLs loads at that commit (train.py declares neither PROMPTS
nor GROUPS, the dataset YAMLs say LASP_PROMPTS, two method YAMLs say TRAINER.MoELASP and LASP_LOSS_WEIGHT); the
values above are the ones those files mean (tests/data/mocoop_reference.json `config_set`).

Where their code departs from what it means, and what this file does:
- Template parsing. Their n_before / n_after count the space-separated pieces of the text before / after '{}' (all
  '.' removed), not its tokens. For "{} texture." the text after is " texture", two pieces (the leading space makes an
  empty one), so expert 0 learns "texture" *and* the end-of-text token of its class prompts; where a word is several
  BPE tokens the prompt is misaligned: "itap of a {}." (ImageNet's expert: 3 words, 4 tokens) learns "it ap of" and
  leaves "a" in place of the class name's first token, Food101's "a photo of a  {}." (two spaces: 5 pieces, 4 tokens)
  drops the class name's first token. `template_parsing: tokens` (default) learns exactly the BPE tokens of the words
  before and after the class name; `authors` counts as their code does (the reference test uses it; on the reference
  templates the two differ only in "{} texture.").
- Class names of the t2t and gate terms. Their t2t loss runs over *all* the dataset's class names also when training
  on the base classes (DATASET.SUBSAMPLE_CLASSES base builds the references from all_class_names), so base-to-new
  training sees the new classes' names: a leak of the new classes into training (as LASP's). `t2t_classnames:
  training` (default) uses the class names being trained on; `dataset` is the authors' choice (every class name of
  the dataset; the classifier needs them: ClassifierContext.dataset_classnames).
- Kept as theirs: w's width, which their code reads from ln_final (equal to the projected width only in ViT-B/16),
  is the projected embedding width, read from the text tower; the 0.05-noise they add in place to the hand-crafted
  text features before half the t2t steps never reaches the loss (the prototypes were averaged at build time), so it
  is left out; with a batch size under 4 their code zeroes the experts no image of the batch selected (their
  t2t term then trains only the selected ones), here every expert is always encoded; their default amp also clips
  the gradient norm to 1 (not done: the training loop's precision is the workbench's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.layer_norm_tuning import VisionLayerNormTuning
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH,
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, matches_authors_code, register_method,
)
from models.prompting.prompt_assembly import count_name_tokens, require_prompts_fit
from models.prompting.template_groups import TemplateGroups, TemplateGroupsError
from models.prompting.text_passes import TextPassParameters, encode_in_passes

TEMPLATE_PARSINGS = ("tokens", "authors")
T2T_CLASSNAMES = ("training", "dataset")


@dataclass(frozen=True)
class MoCoOpParameters(TextPassParameters):
    text_loss_weight: float = 5.0  # TEXT_LOSS_WEIGHT (the B2N YAML's LASP_LOSS_WEIGHT)
    gate_loss_weight: float = 1.0  # GATE_LOSS_WEIGHT
    experts_per_image: int = 2  # top-k of the router, and the k entries of text_gating that get gate_target_boost
    gate_target_boost: float = 10.0  # added to the k largest entries of the gate's target logits (theirs: 10)
    correction: bool = True  # ENABLE_CORRECTION with TRAIN_W: the learned vector w added to every expert's feature
    finetune_vision_layer_norms: bool = True  # FINETUNE_VIT_LN
    layer_norm_learning_rate_scale: float = 0.1  # their optimizer group of the LayerNorms: 0.1 x OPTIM.LR
    template_parsing: str = "tokens"  # "tokens" or "authors" (module docstring)
    t2t_classnames: str = "training"  # "training" or "dataset" (the authors'; leaks new class names in base-to-new)
    # None: the dataset's (datasets.yaml template_groups); else {templates: [...], groups: [...]}
    template_groups: Any = None
    init_seed: int = 0  # the router's initialisation, independent of the data seed

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.template_parsing not in TEMPLATE_PARSINGS:
            raise ValueError(f"mocoop: template_parsing must be one of {TEMPLATE_PARSINGS}, got "
                             f"{self.template_parsing!r}")
        if self.t2t_classnames not in T2T_CLASSNAMES:
            raise ValueError(f"mocoop: t2t_classnames must be one of {T2T_CLASSNAMES}, got {self.t2t_classnames!r}")
        if isinstance(self.experts_per_image, bool) or not isinstance(self.experts_per_image, int) \
                or self.experts_per_image < 1:
            raise ValueError(f"mocoop: experts_per_image must be an integer >= 1, got {self.experts_per_image!r}")
        if self.layer_norm_learning_rate_scale < 0:
            raise ValueError(f"mocoop: layer_norm_learning_rate_scale must be >= 0, got "
                             f"{self.layer_norm_learning_rate_scale!r}")
        if self.template_groups is not None:
            try:
                groups = TemplateGroups.from_dict(self.template_groups)
            except TemplateGroupsError as error:
                raise ValueError(error.within("mocoop: template_groups")) from error
            object.__setattr__(self, "template_groups", groups)


def split_template(template: str) -> tuple[str, str]:
    """(text before '{}', text after it), as their code cuts it: every '.' removed, the character before '{}' (a
    space) dropped; "{} texture." -> ("", " texture")."""
    before, after = template.replace(".", "").split("{}")
    return before[:-1], after


def learned_word_count(text: str, tokenizer, parsing: str) -> int:
    """How many token positions of `text` are learned: its BPE tokens, or (`authors`) its space-separated pieces."""
    if parsing == "authors":
        return len(text.split(" ")) if text else 0
    return count_name_tokens(tokenizer, text) if text.strip() else 0


def projected_width(text_tower) -> int:
    """The width of the text (and image) embedding: the text projection's output, else the tower's own width."""
    projection = text_tower.text_projection
    if projection is None:
        return text_tower.ln_final.weight.shape[0]
    return projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1]


class ExpertPrompts(nn.Module):
    """Frozen token embeddings of one expert's prompts, "{before} {class}{after}[.]", and where its learned words go."""

    def __init__(self, text_tower, tokenizer, classnames: list[str], before: str, after: str, n_before: int,
                 n_after: int, period: bool):
        super().__init__()
        texts = [f"{before} {name}{after}" + ("." if period else "") for name in classnames]
        require_prompts_fit(tokenizer, {name: [text] for name, text in zip(classnames, texts)},
                            text_tower.context_length)
        device = text_tower.token_embedding.weight.device
        token_ids = tokenizer(texts).to(device)
        with torch.no_grad():
            embeddings = text_tower.embed_tokens(token_ids)
        length = token_ids.shape[1]
        positions = torch.arange(length, device=device)
        name_lengths = torch.tensor([count_name_tokens(tokenizer, name) for name in classnames], device=device)
        # The learned words after the class name start right after its tokens: per class, the index into ctx_after
        # of every position (-1: a frozen token).
        after_start = (1 + n_before + name_lengths).unsqueeze(1)
        offset = positions.unsqueeze(0) - after_start
        after_index = torch.where((offset >= 0) & (offset < n_after), offset, torch.full_like(offset, -1))
        self.n_before = n_before
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("embeddings", embeddings, persistent=False)
        self.register_buffer("after_index", after_index, persistent=False)

    def assemble(self, ctx_before: torch.Tensor, ctx_after: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Token embeddings (stop - start, L, D) of classes start..stop-1: [SOS, ctx_before, class, ctx_after, rest]."""
        embeddings = self.embeddings[start:stop]
        n_classes = embeddings.shape[0]
        ctx_before = ctx_before.to(embeddings.dtype).unsqueeze(0).expand(n_classes, -1, -1)
        prompts = torch.cat([embeddings[:, :1], ctx_before, embeddings[:, 1 + self.n_before:]], dim=1)
        if ctx_after.shape[0] == 0:  # joined all the same, so that the empty parameter gets its (0, D) gradient
            return torch.cat([prompts, ctx_after.to(embeddings.dtype).unsqueeze(0).expand(n_classes, -1, -1)], dim=1)
        after_index = self.after_index[start:stop]
        learned = ctx_after.to(embeddings.dtype)[after_index.clamp_min(0)]
        return torch.where((after_index >= 0).unsqueeze(-1), learned, prompts)


class MoCoOpPromptLearner(nn.Module):
    """The learned prompt state, named as the authors' PromptLearner: ctx_before_e, ctx_after_e, w, gate."""

    def __init__(self, initial_words: list[tuple[torch.Tensor, torch.Tensor]], width: int, correction: bool):
        super().__init__()
        for index, (before, after) in enumerate(initial_words):
            self.register_parameter(f"ctx_before_{index}", nn.Parameter(before.detach().clone().float()))
            self.register_parameter(f"ctx_after_{index}", nn.Parameter(after.detach().clone().float()))
        device = initial_words[0][0].device
        self.n_experts = len(initial_words)
        self.w = nn.Parameter(torch.zeros(1, width, device=device)) if correction else None
        self.gate = nn.Linear(width, self.n_experts, device=device)

    def words(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"ctx_before_{expert}"), getattr(self, f"ctx_after_{expert}")


class MoCoOpClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: MoCoOpParameters):
        groups = parameters.template_groups or context.template_groups
        if groups is None:
            raise ValueError("mocoop needs the dataset's template groups (datasets.yaml: template_groups: {templates: "
                             "[...], groups: [...]}) or the method parameter template_groups")
        groups = TemplateGroups.from_dict(groups)
        if len(groups.groups) < parameters.experts_per_image:
            raise ValueError(f"mocoop routes each image to {parameters.experts_per_image} experts, but the template "
                             f"groups make {len(groups.groups)}")
        image_encoder = (VisionLayerNormTuning(context.clip_model, "mocoop")
                         if parameters.finetune_vision_layer_norms else None)
        super().__init__(context)
        self.parameters_used = parameters
        self.template_groups = groups
        self.image_encoder = image_encoder
        self._frozen_visual = [context.clip_model.visual]  # outside the module tree: the shared backbone
        self._tokenizer = context.tokenizer
        text_tower, tokenizer = context.text_tower, context.tokenizer
        device = text_tower.token_embedding.weight.device

        self.expert_splits = [split_template(template) for template in groups.first_templates]
        counts = [(learned_word_count(before, tokenizer, parameters.template_parsing),
                   learned_word_count(after, tokenizer, parameters.template_parsing))
                  for before, after in self.expert_splits]
        self.n_words = counts
        initial_words = []
        for (before, after), (n_before, n_after) in zip(self.expert_splits, counts):
            words = []
            for text, count in ((before, n_before), (after, n_after)):
                with torch.no_grad():
                    embedded = text_tower.embed_tokens(tokenizer([text]).to(device))
                words.append(embedded[0, 1:1 + count])
            initial_words.append(tuple(words))
        with torch.random.fork_rng(devices=[]):  # seeded without moving the global random stream
            torch.manual_seed(parameters.init_seed)
            self.prompt_learner = MoCoOpPromptLearner(initial_words, projected_width(text_tower),
                                                      parameters.correction)
        self.experts = nn.ModuleList([
            ExpertPrompts(text_tower, tokenizer, self.classnames, before, after, n_before, n_after, period=False)
            for (before, after), (n_before, n_after) in zip(self.expert_splits, counts)])

        # The t2t classes and, for the gate's target, where each training class sits among them.
        if parameters.t2t_classnames == "dataset" and context.dataset_classnames is not None:
            t2t_classnames = list(context.dataset_classnames)
        else:
            t2t_classnames = list(self.classnames)
        missing = [name for name in self.classnames if name not in t2t_classnames]
        if missing:
            raise ValueError(f"mocoop: training classes {missing} are not among the dataset's class names")
        self.t2t_classnames = t2t_classnames
        self.register_buffer("t2t_index_of_class",
                             torch.tensor([t2t_classnames.index(name) for name in self.classnames], device=device),
                             persistent=False)
        self._t2t = None  # (expert prompts ending in '.', grouped prototypes): built at the first training step
        self._evaluation_cache = None

    # ---- image side -------------------------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features (B, E): through the tuned LayerNorms, else the frozen tower."""
        if self.image_encoder is not None:
            features = self.image_encoder(images)
        else:
            visual = self._frozen_visual[0]
            with torch.no_grad():
                features = visual(images.to(next(visual.parameters()).dtype))
        return F.normalize(features.float(), dim=-1)

    def route(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router logits (B, E), indices (B, k) of the top-k experts, their mixing weights (B, k))."""
        router_logits = self.prompt_learner.gate(image_features.to(self.prompt_learner.gate.weight.dtype))
        values, indices = torch.topk(router_logits, k=self.parameters_used.experts_per_image, dim=-1)
        return router_logits, indices, values.softmax(dim=-1)

    # ---- text side --------------------------------------------------------------------------------------------
    def _encode_experts(self, experts: nn.ModuleList) -> torch.Tensor:
        """Normalised (E, C, D) features of every expert's prompts (+ w), text_chunk_size prompts per pass."""
        features = []
        for index, pieces in enumerate(experts):
            ctx_before, ctx_after = self.prompt_learner.words(index)

            def encode_classes(start: int, stop: int, pieces=pieces, ctx_before=ctx_before, ctx_after=ctx_after):
                prompts = pieces.assemble(ctx_before, ctx_after, start, stop)
                return self.text_tower(prompts, pieces.token_ids[start:stop])

            raw = encode_in_passes(encode_classes, pieces.token_ids.shape[0],
                                   self.parameters_used.text_chunk_size).float()
            if self.prompt_learner.w is not None:
                raw = raw + self.prompt_learner.w
            features.append(F.normalize(raw, dim=-1))
        return torch.stack(features)

    def expert_text_features(self) -> torch.Tensor:
        """(E, C, D) normalised features of every expert for the classes; without gradients (evaluation), encoded once
        while the prompt parameters stay as they are."""
        if torch.is_grad_enabled():
            return self._encode_experts(self.experts)
        key = tuple((id(p), p._version, p.device) for p in self.prompt_learner.parameters())
        if self._evaluation_cache is None or self._evaluation_cache[0] != key:
            self._evaluation_cache = (key, self._encode_experts(self.experts))
        return self._evaluation_cache[1]

    def mixture_logits(self, image_features: torch.Tensor, indices: torch.Tensor,
                       weights: torch.Tensor) -> torch.Tensor:
        experts = self.expert_text_features()  # (E, C, D)
        text = torch.einsum("bk,bkcd->bcd", weights, experts[indices])  # not re-normalised, as theirs
        return self.logit_scale * torch.einsum("bd,bcd->bc", image_features, text)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_features = self.image_features(images)
        _, indices, weights = self.route(image_features)
        return self.mixture_logits(image_features, indices, weights)

    # ---- the t2t and gate terms -------------------------------------------------------------------------------
    def _t2t_parts(self) -> tuple[nn.ModuleList, torch.Tensor]:
        if self._t2t is None:
            text_tower, tokenizer, names = self.text_tower, self._tokenizer, self.t2t_classnames
            experts = nn.ModuleList([
                ExpertPrompts(text_tower, tokenizer, names, before, after, n_before, n_after, period=True)
                for (before, after), (n_before, n_after) in zip(self.expert_splits, self.n_words)])
            per_template = []
            with torch.no_grad():
                for template in self.template_groups.templates:
                    pieces = ExpertPrompts(text_tower, tokenizer, names, *split_template(template), 0, 0, period=True)
                    raw = encode_in_passes(lambda start, stop, p=pieces: text_tower(p.embeddings[start:stop],
                                                                                   p.token_ids[start:stop]),
                                           len(names), self.parameters_used.text_chunk_size)
                    per_template.append(F.normalize(raw.float(), dim=-1))
                grouped = torch.split(torch.stack(per_template), list(self.template_groups.groups))
                prototypes = F.normalize(torch.stack([group.mean(dim=0) for group in grouped]), dim=-1)
            self._t2t = (experts, prototypes)
        return self._t2t

    def grouped_prototypes(self) -> torch.Tensor:
        """(G, C_t2t, D): per group, the normalised mean of its templates' normalised hand-crafted features."""
        return self._t2t_parts()[1]

    def t2t_expert_text_features(self) -> torch.Tensor:
        return self._encode_experts(self._t2t_parts()[0])

    def t2t_loss(self) -> torch.Tensor:
        """Cross-entropy of expert_e . prototypes_e (no temperature) over experts x t2t classes."""
        experts, prototypes = self.t2t_expert_text_features(), self.grouped_prototypes()
        logits = torch.einsum("ecd,efd->ecf", experts, prototypes.to(experts.device))
        n_classes = logits.shape[1]
        targets = torch.arange(n_classes, device=logits.device).repeat(logits.shape[0])
        return F.cross_entropy(logits.reshape(-1, n_classes), targets)

    def text_gating(self, image_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, G): image . prototype of its class per group, + gate_target_boost on the k largest (not detached)."""
        group_features = F.normalize(self.grouped_prototypes().to(image_features.device), dim=-1)
        classes = self.t2t_index_of_class.to(labels.device)[labels]
        gating = torch.einsum("bd,gbd->bg", image_features, group_features[:, classes])
        top = torch.topk(gating, k=self.parameters_used.experts_per_image, dim=-1).indices
        boost = torch.zeros_like(gating).scatter(1, top, self.parameters_used.gate_target_boost)
        return gating + boost

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor,
                   sample_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The three loss terms and the logits of one training batch."""
        image_features = self.image_features(images)
        router_logits, indices, weights = self.route(image_features)
        logits = self.mixture_logits(image_features, indices, weights)
        target = self.text_gating(image_features, labels).softmax(dim=-1)
        gate = F.cross_entropy(router_logits.float(), target.float(), reduction="none")
        gate = gate.mean() if sample_weights is None else (gate * sample_weights).sum() / sample_weights.sum()
        return {"ce": self.loss(logits.float(), labels, sample_weights), "t2t": self.t2t_loss(), "gate": gate,
                "logits": logits}

    def training_loss(self, image_features, labels, sample_weights=None):
        terms = self.loss_terms(image_features, labels, sample_weights)
        p = self.parameters_used
        return terms["ce"] + p.text_loss_weight * terms["t2t"] + p.gate_loss_weight * terms["gate"], terms["logits"]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The tuned LayerNorms at layer_norm_learning_rate_scale x the learning rate after warm-up (their optimizer
        group), the prompt learner at 1 x."""
        groups = [{"params": [p for p in self.prompt_learner.parameters() if p.requires_grad], "lr_scale": 1.0}]
        if self.image_encoder is not None:
            groups.append({"params": list(self.image_encoder.parameters()),
                           "lr_scale": self.parameters_used.layer_norm_learning_rate_scale})
        return groups


register_method(
    MethodSpec(
        name="mocoop",
        parameters_type=MoCoOpParameters,
        build=MoCoOpClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,  # the image tower's LayerNorms are tuned: images go through it at every step
        reads_template_groups=True,
        hooks="text tower input: one soft prompt per template group (learned words around the class name), mixed per "
              "image by a top-2 router; a correction vector on the text features; the image tower's LayerNorms",
        description="MoCoOp: mixture of template-group prompts with a top-2 image router, CE + 5 x text-to-text "
                    "(experts vs grouped hand-template prototypes) + gate loss; vision LayerNorms tuned.",
        paper=Paper("Du, Niu & Zhao", "Mixture of Prompt Learning for Vision Language Models", "arXiv 2024",
                    "https://arxiv.org/abs/2409.12011"),
        hook_points=("text input", "image layers", "feature space"),
        selection_note=DASSL_LAST_EPOCH,
        verification=matches_authors_code(
            "tests/prompting/test_mocoop_reference.py::test_forward_losses_and_gradients_match_reference",
            "dyabel/mocoop at 04b5d2a",
            "Expert text features, router logits and top-2 choice, logits, the CE, text-to-text and gate losses "
            "within 1e-5, and the gradient of every prompt parameter and vision LayerNorm, per term and in total, "
            "within rounding (their template parsing and all class names, as the reference ran)."),
    )
)
