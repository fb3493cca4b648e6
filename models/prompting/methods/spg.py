"""SPG, Soft Prompt Generation (Bai et al., ECCV 2024): a conditional GAN that writes a CoOp context per image.

Hooks: the text tower's input token embeddings, as CoOp, but the context of each test image is generated from its
(frozen) image feature, so every image gets its own C class prompts (encoded as CoCoOp's, per image, by
models.prompting.text_passes.encode_image_conditioned_prompts). The image tower is frozen: cached features serve.

Training (`fit`, its own two stages; the shared loop runs stage I):
- Stage I, domain prompts: one CoOp context per source domain, trained by CoOp itself (`CoOpClassifier` through
  `train_prompt_parameters`) on that domain's images alone, with the same seed for every domain; these are the
  "prompt labels" P_d (the authors' SPG_CoOp/b32_ep50.yaml: SGD lr 2e-3, batch 32, 50 epochs, one constant warm-up
  epoch at 1e-5; context "a photo of a").
- Stage II, the conditional LSGAN. G([z ~ N(0, I_latent); f(x)]) is an MLP 128-256-512-1024 (LeakyReLU 0.2;
  BatchNorm on all but the first hidden layer) ending in a linear layer to n_context x width and tanh. D([ctx; f(x)])
  is 3 hidden layers of 512 (LeakyReLU 0.2; dropout 0.4 after the second and third) and one output. f(x) is the
  L2-normalised image feature; widths (text token width, image feature dim) are read from the model. Per step, on a
  real batch x with domains d and a fake batch x': D minimises MSE(D(P_d, f(x)), 1) + MSE(D(G(z, f(x')), f(x')), 0)
  (G's output detached), then G minimises MSE(D(G(z, f(x')), f(x')), 1). Each parameter tensor's gradient is clipped
  to its own norm (the authors' per-layer grad-norm clipping, below). AdamW (lr 2e-3 on PACS/VLCS, 2e-4 elsewhere;
  weight decay 1e-4) for each network, 70 epochs, Dassl's linear warm-up over 4 epochs then cosine
  (`learning_rate_at_epoch`). With a validation set (the source domains' val split) the generator of the best
  epoch is kept, as the authors' after_epoch does.
- Inference: the context of test image x is G(z, f(x)) in eval mode (BatchNorm's running statistics).

What the file decides where the authors' code (renytek13/Soft-Prompt-Generation fe128c0, trainers/spg_cgan.py)
differs from the paper or from us:
- The fake batch. The code finds it by iterating the train loader up to a shuffled batch index on every step (O(N)
  per step; a fresh shuffle each time, so the fake batch is a random batch of the training set independent of the
  real one). Here the fake batch of step b is batch b of a second seeded permutation of the training set, drawn per
  epoch: the same distribution without the scan. As Dassl's train loader, the last incomplete batch is dropped
  (unless the training set is smaller than one batch).
- Noise at test time. The code draws z unseeded at every forward, so its test accuracy varies between runs. Here z is
  drawn from a generator seeded with `evaluation_noise_seed` at every forward in eval mode: the same images in the
  same batch get the same prompts and logits every time (z still differs between the images of a batch). In training
  z comes from the global RNG, which the experiment's seed fixes.
- BatchNorm1d(width, 0.8): the code passes 0.8 as BatchNorm's eps (PyTorch-GAN's cgan.py, where momentum was meant).
  We follow the code (`batch_norm_eps`), since the published prompts were produced with it.
- Initialisation: every linear weight Kaiming-uniform (fan_in, leaky_relu, a = 0), biases PyTorch's default, as the
  code; seeded by `init_seed` without touching the global RNG.
- Clipping groups, by position as the code's parameter names select them: D's first and last linear layers (weight
  and bias) at `discriminator_max_norm_outer`, its other weights / biases at `discriminator_max_norm_weight` /
  `_bias`; G's weights (linear and BatchNorm) at `generator_max_norm_weight`, the last BatchNorm's and the output
  layer's biases at `generator_max_norm_last_bias`, its other biases at `generator_max_norm_bias`. Defaults: the
  values the published config sets (PACS); its comment gives other datasets D 5e-2 / 5e-1 / 5 and G 5e-3 / 5e-8 / 1,
  and no clipping on PACS's cartoon and photo (`gradient_clipping: false`).
- Logits are the logit scale times the cosine, as every method here; the code's test omits the scale (the same
  argmax).
- The code hardcodes 512 for the context width and reads the prompt labels from files of one seed (seed_1) for every
  run; here widths come from the model and stage I runs with the experiment's seed.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.coop import CoOpClassifier, CoOpParameters
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.prompt_assembly import tokenize_context_prompts
from models.prompting.text_passes import TextPassParameters, encode_image_conditioned_prompts
from models.prompting.training import OptimizationConfig, TrainingHistory, predict_logits, train_prompt_parameters


@dataclass(frozen=True)
class SPGParameters(TextPassParameters):
    # the context (stage I's CoOp and the generated one); "a photo of a" as the authors' configs
    n_context: int = 4
    context_init: str | None = "a photo of a"
    init_std: float = 0.02
    init_seed: int = 0  # G and D (and a random CoOp context), independent of the data seed
    # stage I: CoOp per source domain (SPG_CoOp/b32_ep50.yaml)
    domain_prompt_epochs: int = 50
    domain_prompt_batch_size: int = 32
    domain_prompt_learning_rate: float = 0.002
    domain_prompt_momentum: float = 0.9
    domain_prompt_weight_decay: float = 0.0005
    domain_prompt_warmup_epochs: int = 1
    domain_prompt_warmup_learning_rate: float = 1e-5
    # stage II: the conditional GAN (trainers/spg_cgan.py)
    latent_dim: int = 100
    generator_widths: tuple[int, ...] = (128, 256, 512, 1024)
    discriminator_width: int = 512
    discriminator_layers: int = 3
    discriminator_dropout: float = 0.4
    leaky_slope: float = 0.2
    batch_norm_eps: float = 0.8  # the code's BatchNorm1d(width, 0.8): eps, not momentum (module docstring)
    gradient_clipping: bool = True
    discriminator_max_norm_weight: float = 0.5
    discriminator_max_norm_bias: float = 0.5
    discriminator_max_norm_outer: float = 5.0
    generator_max_norm_weight: float = 0.05
    generator_max_norm_bias: float = 5e-7
    generator_max_norm_last_bias: float = 5.0
    evaluation_noise_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "generator_widths", tuple(self.generator_widths))  # the catalog gives a list
        if not self.generator_widths or any(int(w) < 1 for w in self.generator_widths):
            raise ValueError(f"generator_widths must be positive widths, got {self.generator_widths}")
        if self.discriminator_layers < 1 or self.discriminator_width < 1 or self.latent_dim < 1:
            raise ValueError("latent_dim, discriminator_width and discriminator_layers must be >= 1")

    def domain_prompt_method(self) -> CoOpParameters:
        """Stage I's CoOp: unified context, class token at the end, as the generated context is used."""
        return CoOpParameters(n_context=self.n_context, context_init=self.context_init, init_std=self.init_std,
                              init_seed=self.init_seed, text_chunk_size=self.text_chunk_size)

    def domain_prompt_schedule(self, seed: int, experiment: str = "") -> OptimizationConfig:
        return OptimizationConfig(
            epochs=self.domain_prompt_epochs, batch_size=self.domain_prompt_batch_size,
            learning_rate=self.domain_prompt_learning_rate, momentum=self.domain_prompt_momentum,
            weight_decay=self.domain_prompt_weight_decay, warmup_epochs=self.domain_prompt_warmup_epochs,
            warmup_learning_rate=self.domain_prompt_warmup_learning_rate, seed=seed, optimizer="sgd",
            experiment=f"{experiment} (SPG stage I)" if experiment else "SPG stage I")


def kaiming_initialised(module: nn.Module) -> nn.Module:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, mode="fan_in", nonlinearity="leaky_relu")
    return module


class PromptGenerator(nn.Module):
    """G: [z; f(x)] -> context (B, n_context, width), tanh-bounded."""

    def __init__(self, feature_dim: int, n_context: int, width: int, parameters: SPGParameters):
        super().__init__()
        self.n_context, self.width = n_context, width
        widths = [int(w) for w in parameters.generator_widths]
        layers: list[nn.Module] = []
        previous = parameters.latent_dim + feature_dim
        for index, hidden in enumerate(widths):
            layers.append(nn.Linear(previous, hidden))
            if index > 0:
                layers.append(nn.BatchNorm1d(hidden, parameters.batch_norm_eps))
            layers.append(nn.LeakyReLU(parameters.leaky_slope))
            previous = hidden
        layers += [nn.Linear(previous, n_context * width), nn.Tanh()]
        self.model = kaiming_initialised(nn.Sequential(*layers))

    def forward(self, noise: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """noise (B, latent), image: normalised features (B, E)."""
        output = self.model(torch.cat([noise, image], dim=-1))
        return output.view(image.shape[0], self.n_context, self.width)

    def clipping_groups(self, parameters: SPGParameters) -> list[tuple[nn.Parameter, float]]:
        """(parameter, max norm): weights; the last BatchNorm's and output layer's biases; other biases."""
        norms = [layer for layer in self.model if isinstance(layer, nn.BatchNorm1d)]
        last_biases = {id(self.model[-2].bias)} | ({id(norms[-1].bias)} if norms else set())
        groups = []
        for name, parameter in self.model.named_parameters():
            if name.endswith("weight"):
                groups.append((parameter, parameters.generator_max_norm_weight))
            elif id(parameter) in last_biases:
                groups.append((parameter, parameters.generator_max_norm_last_bias))
            else:
                groups.append((parameter, parameters.generator_max_norm_bias))
        return groups


class PromptDiscriminator(nn.Module):
    """D: [ctx; f(x)] -> one validity score per pair."""

    def __init__(self, feature_dim: int, n_context: int, width: int, parameters: SPGParameters):
        super().__init__()
        layers: list[nn.Module] = []
        previous = n_context * width + feature_dim
        for index in range(parameters.discriminator_layers):
            layers.append(nn.Linear(previous, parameters.discriminator_width))
            if index > 0:
                layers.append(nn.Dropout(parameters.discriminator_dropout))
            layers.append(nn.LeakyReLU(parameters.leaky_slope))
            previous = parameters.discriminator_width
        layers.append(nn.Linear(previous, 1))
        self.model = kaiming_initialised(nn.Sequential(*layers))

    def forward(self, context: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([context.flatten(1), image], dim=-1))

    def clipping_groups(self, parameters: SPGParameters) -> list[tuple[nn.Parameter, float]]:
        linears = [layer for layer in self.model if isinstance(layer, nn.Linear)]
        outer = {id(p) for layer in (linears[0], linears[-1]) for p in layer.parameters()}
        return [(p, parameters.discriminator_max_norm_outer if id(p) in outer else
                 parameters.discriminator_max_norm_weight if name.endswith("weight") else
                 parameters.discriminator_max_norm_bias)
                for name, p in self.model.named_parameters()]


def discriminator_losses(real_validity: torch.Tensor, fake_validity: torch.Tensor) -> dict[str, torch.Tensor]:
    """LSGAN (MSE) terms of D: real pairs pushed to 1, generated pairs to 0."""
    real = F.mse_loss(real_validity, torch.ones_like(real_validity))
    fake = F.mse_loss(fake_validity, torch.zeros_like(fake_validity))
    return {"discriminator_real": real, "discriminator_fake": fake, "discriminator": real + fake}


def generator_loss(fake_validity: torch.Tensor) -> torch.Tensor:
    """LSGAN (MSE) term of G: its pairs pushed to 1."""
    return F.mse_loss(fake_validity, torch.ones_like(fake_validity))


def clip_each(groups: list[tuple[nn.Parameter, float]]) -> None:
    """Clip every parameter tensor's gradient to its own norm (the authors clip_grad_norm_ one tensor at a time)."""
    for parameter, max_norm in groups:
        if parameter.grad is not None:
            torch.nn.utils.clip_grad_norm_([parameter], max_norm)


def learning_rate_at_epoch(epoch: int, config: OptimizationConfig) -> float:
    """Dassl's LinearWarmupScheduler around CosineAnnealingLR(T_max = epochs), warm-up recounted (0-based epoch):
    warmup_learning_rate at epoch 0, learning_rate * epoch / warmup_epochs until warm-up ends, then the cosine
    restarted at the end of warm-up."""
    warmup = config.warmup_epochs
    if epoch < warmup:
        return config.warmup_learning_rate if epoch == 0 else config.learning_rate * epoch / warmup
    return 0.5 * config.learning_rate * (1 + math.cos(math.pi * (epoch - warmup) / config.epochs))


class SPGClassifier(PromptedClassifier):
    trained_by_gradient = False  # two stages of its own in `fit` (module docstring)

    def __init__(self, context: ClassifierContext, parameters: SPGParameters):
        super().__init__(context)
        self.parameters_used = parameters
        self.classifier_context = context  # stage I builds one CoOp classifier per domain from it
        self.pieces = tokenize_context_prompts(context.text_tower, context.tokenizer, context.classnames,
                                               parameters.n_context, parameters.context_init)
        # With a word initialisation the context length is the init's token count, not n_context.
        n_context = self.pieces.token_ids.shape[1] - 1 - self.pieces.suffix_embeddings.shape[1]
        width, feature_dim = context.text_tower.width, joint_embedding_dim(context.text_tower)
        device = self.pieces.prefix_embeddings.device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            self.generator = PromptGenerator(feature_dim, n_context, width, parameters).to(device)
            self.discriminator = PromptDiscriminator(feature_dim, n_context, width, parameters).to(device)
        self.domain_prompts: torch.Tensor | None = None  # (domains, n_context, width) after stage I

    # -- inference -------------------------------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        raise NotImplementedError("SPG's text features depend on the image: use conditional_text_features")

    def noise(self, n_images: int, device: torch.device) -> torch.Tensor:
        """z for n images: the global RNG while training, a generator seeded anew at each eval forward."""
        latent = self.parameters_used.latent_dim
        if self.training:
            return torch.randn(n_images, latent, device=device)
        seeded = torch.Generator().manual_seed(self.parameters_used.evaluation_noise_seed)
        return torch.randn(n_images, latent, generator=seeded).to(device)

    def generated_contexts(self, image_features: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        image = F.normalize(image_features.float(), dim=-1)
        if noise is None:
            noise = self.noise(image.shape[0], image.device)
        return self.generator(noise, image)

    def conditional_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Raw text features (B, C, E) of the class prompts around each image's generated context."""
        return encode_image_conditioned_prompts(self.text_tower, self.generated_contexts(image_features), self.pieces,
                                                self.parameters_used.text_chunk_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        image = F.normalize(image_features.float(), dim=-1)
        text = F.normalize(self.conditional_text_features(image_features).float(), dim=-1)
        return self.logit_scale * torch.einsum("be,bce->bc", image, text)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        # the generator with its BatchNorm statistics: all inference needs (D and the domain prompts train it)
        return {f"generator.{name}": tensor.detach().cpu().contiguous()
                for name, tensor in self.generator.state_dict().items()}

    # -- stage I ---------------------------------------------------------------------------------------------------
    def train_domain_prompts(self, view_inputs: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                             n_domains: int, seed: int, experiment: str = "") -> torch.Tensor:
        """(n_domains, n_context, width): CoOp's context trained on each domain's images alone, same seed each."""
        parameters = self.parameters_used
        device = self.logit_scale.device
        prompts = []
        for domain in range(n_domains):
            chosen = domains == domain
            if not bool(chosen.any()):
                raise ValueError(f"SPG stage I: source domain {domain} has no training image")
            coop = CoOpClassifier(self.classifier_context, parameters.domain_prompt_method())
            torch.manual_seed(seed)  # as train_prompts before any run: each domain's CoOp starts alike
            train_prompt_parameters(coop, view_inputs[chosen], labels[chosen],
                                    parameters.domain_prompt_schedule(seed, experiment), device=device)
            prompts.append(coop.context.detach().float())
        return torch.stack(prompts)

    # -- stage II --------------------------------------------------------------------------------------------------
    def adversarial_step(self, real_image: torch.Tensor, real_domains: torch.Tensor, fake_image: torch.Tensor,
                         optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer]) -> dict[str, float]:
        """One step as the authors': D on real and detached fake pairs, clipped, stepped; then G against the updated
        D, clipped, stepped."""
        parameters = self.parameters_used
        discriminator_optimizer, generator_optimizer = optimizers
        assert self.domain_prompts is not None, "stage I first"
        real_contexts = self.domain_prompts[real_domains]  # each real image's own domain prompt
        noise = torch.randn(fake_image.shape[0], parameters.latent_dim, device=fake_image.device)
        generated = self.generator(noise, fake_image)
        discriminator_optimizer.zero_grad(set_to_none=True)
        terms = discriminator_losses(self.discriminator(real_contexts, real_image),
                                     self.discriminator(generated.detach(), fake_image))
        terms["discriminator"].backward()
        if parameters.gradient_clipping:
            clip_each(self.discriminator.clipping_groups(parameters))
        discriminator_optimizer.step()
        generator_optimizer.zero_grad(set_to_none=True)
        generator_term = generator_loss(self.discriminator(generated, fake_image))
        generator_term.backward()
        if parameters.gradient_clipping:
            clip_each(self.generator.clipping_groups(parameters))
        generator_optimizer.step()
        return {"discriminator": float(terms["discriminator"].detach()),
                "generator": float(generator_term.detach())}

    def fit(self, training_set, optimization: OptimizationConfig, on_epoch=None) -> TrainingHistory:
        """Stage I on training_set's domains (training_set.domains; none: one domain, single-source), then stage II
        for optimization.epochs epochs; the generator of the best epoch on training_set.validation, else the last."""
        if optimization is None or optimization.epochs < 1:
            raise ValueError("spg trains its GAN for optimization.epochs >= 1 epochs (the authors: 70)")
        started = time.perf_counter()
        device = self.logit_scale.device
        views = training_set.view_inputs
        if views.dim() == 2:
            views = views.unsqueeze(1)
        if views.dim() != 3:
            raise ValueError(f"spg trains on cached image features (N, V, E); got shape {tuple(views.shape)}")
        labels = training_set.labels
        domains = getattr(training_set, "domains", None)
        if domains is None:
            domains = torch.zeros(len(labels), dtype=torch.long)
        n_domains = int(domains.max()) + 1
        self.domain_prompts = self.train_domain_prompts(views, labels, domains, n_domains, optimization.seed,
                                                        optimization.experiment).to(device)

        torch.manual_seed(optimization.seed)
        optimizers = tuple(torch.optim.AdamW(module.parameters(), lr=optimization.learning_rate,
                                             betas=tuple(optimization.betas), eps=optimization.eps,
                                             weight_decay=optimization.weight_decay)
                           for module in (self.discriminator, self.generator))
        order_generator = torch.Generator().manual_seed(optimization.seed)
        n_samples, n_views = views.shape[:2]
        if n_samples < 2:
            raise ValueError("spg's generator has BatchNorm: it trains on at least 2 images")
        # Dassl's train loader drops the last incomplete batch (drop_last when there is a full one)
        last_start = max(n_samples - optimization.batch_size, 0)
        features = F.normalize(views.float(), dim=-1).to(device)
        domains = domains.to(device)
        history = TrainingHistory()
        best_accuracy, best_state, accuracies = -1.0, None, []
        for epoch in range(optimization.epochs):
            rate = learning_rate_at_epoch(epoch, optimization)
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = rate
            self.generator.train(), self.discriminator.train()
            real_order = torch.randperm(n_samples, generator=order_generator)
            fake_order = torch.randperm(n_samples, generator=order_generator)
            chosen_views = torch.randint(n_views, (n_samples,), generator=order_generator).to(device)
            total, steps = 0.0, 0
            for start in range(0, last_start + 1, optimization.batch_size):
                real = real_order[start:start + optimization.batch_size].to(device)
                fake = fake_order[start:start + optimization.batch_size].to(device)
                losses = self.adversarial_step(features[real, chosen_views[real]], domains[real],
                                               features[fake, chosen_views[fake]], optimizers)
                if not all(math.isfinite(value) for value in losses.values()):
                    raise ValueError(f"{optimization.experiment or 'spg'}: the GAN losses became non-finite at "
                                     f"epoch {epoch + 1} ({losses}); lower optimization.learning_rate")
                total += losses["discriminator"] + losses["generator"]
                steps += 1
            history.steps += steps
            history.epoch_losses.append(total / max(steps, 1))
            history.epoch_accuracies.append(float("nan"))  # the GAN has no training accuracy
            if training_set.validation is not None:
                inputs, val_labels = training_set.validation
                accuracy = float((predict_logits(self, inputs).argmax(dim=1) == val_labels.cpu()).float().mean())
                accuracies.append(accuracy)
                if accuracy > best_accuracy:  # the authors keep the first best (curr_result > best_result)
                    best_accuracy, best_state = accuracy, copy.deepcopy(self.generator.state_dict())
                    history.details["selected_epoch"] = epoch + 1
            if on_epoch is not None:
                on_epoch(epoch + 1, history.epoch_losses[-1], history.epoch_accuracies[-1])
        if best_state is not None:
            self.generator.load_state_dict(best_state)
            history.details["validation_accuracies"] = accuracies
        history.details["domain_prompts"] = self.domain_prompts.cpu().tolist()
        history.details["domain_names"] = list(getattr(training_set, "domain_names", ()) or range(n_domains))
        history.seconds = time.perf_counter() - started
        self.eval()
        return history


register_method(
    MethodSpec(
        name="spg",
        parameters_type=SPGParameters,
        build=SPGClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower input: a context per image, generated by a conditional GAN from the image feature",
        description="SPG: CoOp prompts per source domain, then a conditional LSGAN that generates a context per image.",
        paper=Paper("Bai et al.", "Soft Prompt Generation for Domain Generalization", "ECCV 2024",
                    "https://arxiv.org/abs/2404.19286"),
        hook_points=("text input",),
        selection="full_val",
        selection_note="As the authors' after_epoch: the generator of the epoch best on the source domains' val "
                       "split is tested.",
        verification=tested_property(
            "Stage I gives each source domain the context of a CoOp run on that domain alone; G's contexts are "
            "tanh-bounded of the model's widths; D's real pairs carry each image's own domain prompt; the LSGAN "
            "terms match a hand computation; the held-out domain never enters training.",
            "tests/prompting/test_spg.py::test_stage_one_prompt_per_domain_equals_coop_on_that_domain"),
    )
)
