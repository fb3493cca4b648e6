"""What one unit of work costs on this machine: the backbone's architecture with random weights, timed on the device.

A run plan multiplies counts (images, prompts, steps) by these figures. Random weights cost what the real ones do
(the same shapes and kernels), so no download is needed: `open_clip.create_model(name, pretrained=None)`.

Measured, each at two sizes so that a call's fixed cost (kernel launches, Python) is told apart from the cost per
item (`LinearCost`), at the precision the pipeline uses on the device (models/precision.py):
- image_forward: the frozen image tower, no gradient (feature extraction, evaluation, test-time views);
- image_train: the image tower's forward and backward to its input (the vision-prompt methods: MaPLe, IVLP,
  PromptSRC, VPT, whose prompts sit inside the tower, so every layer's gradient is computed, none of its weights');
- text_forward: class prompts through the text tower, no gradient;
- text_train: class prompts through the text tower and back to their token embeddings (the learned context), in
  one pass (a step over more prompts than a pass holds recomputes each pass's forward: models/prompting/
  text_passes.py, which the plan adds from text_forward);
- decode_seconds: one JPEG decoded and hashed on one CPU core (curation inspects images this way);
- cpu_float64_flops: the host's float64 matrix products (scikit-learn's lbfgs: the linear probe).

Calibrations are cached per (architecture, device name, torch threads) under <workspace>/plans/ with the date and
the torch version; a cache written by another torch version, or `recalibrate=True`, measures again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable

# 2: each size timed by its fastest call, not the median (a calibration taken beside busy neighbours is redone)
# 3: sizes timed again until their timings agree with a fixed plus per-item cost (timings_consistent)
CALIBRATION_FORMAT = 3
# Sizes (items per call) timed on each device: (small, large). The CPU's are small so that ViT-B-16 calibrates in
# well under a minute; a GPU's are the pipeline's own batches (32 images, a 128-prompt text pass).
CPU_SIZES = {"image_forward": (2, 8), "image_train": (1, 3), "text_forward": (4, 16), "text_train": (4, 16)}
CUDA_SIZES = {"image_forward": (32, 128), "image_train": (4, 32), "text_forward": (32, 256), "text_train": (16, 128)}
REPETITIONS = {"cpu": 3, "cuda": 5}
# Rounds of timing every size of a pass again, keeping each size's fastest: at least MIN_RETIMINGS (a neighbour's
# burst stalls consecutive calls, so later rounds find the quiet moments), then while the sizes disagree
# (timings_consistent), up to MAX_RETIMINGS before the fit takes them anyway and the calibration records it.
MIN_RETIMINGS = 2
MAX_RETIMINGS = 8
GROW_BELOW_SECONDS = 0.05
# A JPEG of a typical benchmark photo's size (ImageNet's median is about 500 x 375).
DECODE_IMAGE_SIZE = (500, 375)


@dataclass(frozen=True)
class LinearCost:
    """Seconds of a call on `items` items (images or prompts): per_call + items x per_item."""

    per_call: float
    per_item: float

    def seconds(self, items: float, calls: float = 1.0) -> float:
        return calls * self.per_call + items * self.per_item if items else 0.0

    def scaled(self, factor: float) -> "LinearCost":
        return LinearCost(self.per_call * factor, self.per_item * factor)

    @classmethod
    def fitted(cls, small: tuple[int, float], large: tuple[int, float]) -> "LinearCost":
        """The line through two (items, seconds) timings; a negative intercept (noise) is read as none."""
        (n_small, t_small), (n_large, t_large) = small, large
        per_item = (t_large - t_small) / (n_large - n_small)
        per_call = t_small - n_small * per_item
        if per_call < 0 or per_item <= 0:
            return cls(0.0, t_large / n_large)
        return cls(per_call, per_item)


@dataclass(frozen=True)
class MeasuredCosts:
    architecture: str  # open_clip model name, e.g. ViT-B-16
    device: str  # cpu | cuda
    device_name: str  # the processor's or GPU's name
    threads: int  # torch's intra-op threads while measuring
    torch_version: str
    measured_on: str  # ISO date
    embed_dim: int  # width of the joint space (the linear probe's features)
    image_forward: LinearCost
    image_train: LinearCost
    text_forward: LinearCost
    text_train: LinearCost
    decode_seconds: float
    cpu_float64_flops: float
    precision: dict[str, str] = field(default_factory=dict)  # train / encode, as models/precision.py names them
    calibration_seconds: float = 0.0
    sizes: dict[str, Any] = field(default_factory=dict)  # items per call timed, repetitions
    # the host's 1-minute load average when the calibration started, and its CPU count (None: not known)
    load_average: float | None = None
    cpu_count: int | None = None

    @property
    def taken_beside_load(self) -> bool:
        """Whether other processes kept the host's cores busy while it was measured: its costs may be high."""
        return self.load_average is not None and bool(self.cpu_count) and self.load_average > self.cpu_count

    def as_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "MeasuredCosts":
        values = {key: value for key, value in raw.items() if key != "format"}
        for name in ("image_forward", "image_train", "text_forward", "text_train"):
            values[name] = LinearCost(**values[name])
        return cls(**values)

    @property
    def description(self) -> str:
        """e.g. "cpu (AMD EPYC 7B13, 2 threads, fp32)" or "cuda (NVIDIA H100 80GB HBM3, bf16-autocast)"."""
        if self.device == "cpu":
            return f"cpu ({self.device_name}, {self.threads} threads, {self.precision.get('train', 'fp32')})"
        return f"{self.device} ({self.device_name}, {self.precision.get('train', '')})"


def calibration_path(directory: Path, architecture: str, device_name: str, threads: int) -> Path:
    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")

    return Path(directory) / f"costs-{slug(architecture)}-{slug(device_name)}-{threads}threads.json"


def default_plans_directory() -> Path:
    from models.workspace import default_workspace

    return default_workspace().root / "plans"


def current_device(device: str | None = None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what platform knows, else "cpu"."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or "cpu"


def calibrated_costs(architecture: str, device: str | None = None, recalibrate: bool = False,
                     directory: Path | None = None, quick_gelu: bool = False,
                     log: Callable[[str], None] | None = None) -> MeasuredCosts:
    """The cached calibration of `architecture` on this device and thread count, measured when there is none, when
    it was taken with another torch version, or when `recalibrate`."""
    import torch

    device = current_device(device)
    directory = Path(directory) if directory is not None else default_plans_directory()
    path = calibration_path(directory, architecture, device_name(device), torch.get_num_threads())
    if path.exists() and not recalibrate:
        cached = json.loads(path.read_text())
        if cached.get("format") == CALIBRATION_FORMAT and cached.get("torch_version") == torch.__version__:
            return MeasuredCosts.from_dict(cached)
    if log is not None:
        log(f"calibrating {architecture} on {device} ({device_name(device)}, {torch.get_num_threads()} threads)...")
    costs = measure_costs(architecture, device, quick_gelu=quick_gelu)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(costs.as_dict(), indent=2))
    temporary.replace(path)
    return costs


def measure_costs(architecture: str, device: str = "cpu", quick_gelu: bool = False,
                  sizes: dict[str, tuple[int, int]] | None = None, repetitions: int | None = None) -> MeasuredCosts:
    """Time the four tower passes of `architecture` (random weights) on `device`, and the host's decode and float64
    matrix products."""
    import open_clip
    import torch

    from models.backbones.tiny_clip import register_embedded_model_configs
    from models.precision import precision_for
    from models.prompting.text_tower import TextTower

    started = time.perf_counter()
    load_average, cpu_count = host_load()
    register_embedded_model_configs()
    torch_device = torch.device(device)
    sizes = sizes or (CUDA_SIZES if torch_device.type == "cuda" else CPU_SIZES)
    repetitions = repetitions or REPETITIONS.get(torch_device.type, 2)
    with _quiet_open_clip():  # it warns that no pretrained weights were loaded: that is the point
        model = open_clip.create_model(architecture, pretrained=None, force_quick_gelu=quick_gelu)
    model = model.to(torch_device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    text_tower = TextTower(model)
    training, encoding = precision_for(torch_device, training=True), precision_for(torch_device, training=False)
    image_size = model.visual.image_size
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    generator = torch.Generator().manual_seed(0)

    def images(count: int, grad: bool) -> torch.Tensor:
        pixels = torch.randn(count, 3, height, width, generator=generator).to(torch_device)
        return pixels.requires_grad_(grad)

    def token_ids(count: int) -> torch.Tensor:
        # A prompt's end-of-text token is its largest id (argmax pooling finds it); its place changes no cost.
        length, vocabulary = text_tower.context_length, text_tower.token_embedding.weight.shape[0]
        ids = torch.randint(1, vocabulary - 1, (count, length), generator=generator)
        ids[:, min(20, length - 1)] = vocabulary - 1
        return ids.to(torch_device)

    def image_forward(count: int) -> Callable[[], Any]:
        pixels = images(count, grad=False)

        def run():
            with torch.no_grad(), encoding.autocast():
                return model.visual(pixels)
        return run

    def image_train(count: int) -> Callable[[], Any]:
        pixels = images(count, grad=True)

        def run():
            with training.autocast():
                output = model.visual(pixels)
            output.float().sum().backward()
        return run

    def text_forward(count: int) -> Callable[[], Any]:
        ids = token_ids(count)
        embeddings = text_tower.embed_tokens(ids).detach()

        def run():
            with torch.no_grad(), encoding.autocast():
                return text_tower(embeddings, ids)
        return run

    def text_train(count: int) -> Callable[[], Any]:
        ids = token_ids(count)
        embeddings = text_tower.embed_tokens(ids).detach().requires_grad_(True)

        def run():
            with training.autocast():
                output = text_tower(embeddings, ids)
            output.float().sum().backward()
        return run

    passes = {"image_forward": image_forward, "image_train": image_train, "text_forward": text_forward,
              "text_train": text_train}
    fitted, timings, inconsistent = {}, {}, []
    for name, make in passes.items():
        small, large = sizes[name]
        calls = {count: make(count) for count in (large, small)}
        seconds = {count: _timed(call, repetitions, torch_device) for count, call in calls.items()}
        # A call this fast is mostly fixed cost: time larger ones, up to the pipeline's own batches, so that the
        # cost per item is not an extrapolation from calls that hardly hold any.
        while seconds[large] < GROW_BELOW_SECONDS and large < CUDA_SIZES[name][1]:
            large = min(4 * large, CUDA_SIZES[name][1])
            calls[large] = make(large)
            seconds[large] = _timed(calls[large], repetitions, torch_device)
        # Beside a busy neighbour every call of one size can stall (on a shared 2-core CPU, 8 images once took
        # 0.4 s and 2 images 3 ms, a hundredfold the cost per image): time every size again in later rounds,
        # keeping each one's fastest, at least twice and until the timings are consistent with a fixed cost plus
        # a cost per item.
        for round_ in range(MAX_RETIMINGS):
            if round_ >= MIN_RETIMINGS and timings_consistent(seconds):
                break
            for count, call in calls.items():
                seconds[count] = min(seconds[count], _timed(call, repetitions, torch_device))
        else:
            inconsistent.append(name)
        del calls
        sizes = {**sizes, name: (small, large)}
        timings[name] = {str(count): round(value, 6) for count, value in sorted(seconds.items())}
        fitted[name] = LinearCost.fitted((small, seconds[small]), (large, seconds[large]))
    embed_dim = int(open_clip.get_model_config(architecture)["embed_dim"])
    return MeasuredCosts(
        architecture=architecture, device=torch_device.type, device_name=device_name(device),
        threads=torch.get_num_threads(), torch_version=torch.__version__, measured_on=date.today().isoformat(),
        embed_dim=embed_dim, **fitted, decode_seconds=measure_decode_seconds(),
        cpu_float64_flops=measure_cpu_float64_flops(), precision={"train": training.name, "encode": encoding.name},
        calibration_seconds=round(time.perf_counter() - started, 2), load_average=load_average, cpu_count=cpu_count,
        sizes={"items_per_call": {name: list(sizes[name]) for name in passes}, "repetitions": repetitions,
               "fastest_seconds": timings, "inconsistent": inconsistent},
    )


def host_load() -> tuple[float | None, int | None]:
    """The 1-minute load average and the CPU count (None where the platform does not say)."""
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return load, os.cpu_count()


def timings_consistent(seconds: dict[int, float], slack: float = 1.5) -> bool:
    """Whether the timings of one pass at several sizes ({items: seconds}) fit a fixed cost per call plus a cost per
    item: of any two sizes, the larger call takes no less time than the smaller and no more time per item (each
    within `slack`)."""
    ordered = sorted(seconds.items())
    return all(t_small <= slack * t_large and t_large / n_large <= slack * t_small / n_small
               for (n_small, t_small), (n_large, t_large) in zip(ordered, ordered[1:]))


def _timed(run: Callable[[], Any], repetitions: int, device, min_seconds: float = 0.3,
           max_repetitions: int = 50) -> float:
    """The fastest of timed calls after one untimed warm-up call: at least `repetitions`, more while they add up to
    less than `min_seconds`. A busy neighbour only ever slows a call down, so the fastest is the one closest to the
    call's own cost: with the median of 2, one calibration on a shared 2-core machine priced a tiny-clip image at
    34 ms in inference and 4 ms in training (0.44 s and 0.65 s for 2 and 8 images)."""
    import torch

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    synchronize()
    seconds: list[float] = []
    while len(seconds) < repetitions or (sum(seconds) < min_seconds and len(seconds) < max_repetitions):
        started = time.perf_counter()
        run()
        synchronize()
        seconds.append(time.perf_counter() - started)
    return min(seconds)


def measure_decode_seconds(repetitions: int = 15) -> float:
    """Seconds to hash and decode one photo-sized JPEG on one core, as the index inspects an image."""
    import numpy as np
    from PIL import Image

    rows = np.linspace(0, 255, DECODE_IMAGE_SIZE[1])[:, None, None]
    columns = np.linspace(0, 255, DECODE_IMAGE_SIZE[0])[None, :, None]
    noise = np.random.default_rng(0).normal(0, 12, (DECODE_IMAGE_SIZE[1], DECODE_IMAGE_SIZE[0], 3))
    pixels = np.clip(rows * 0.6 + columns * 0.4 + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    encoded = buffer.getvalue()

    def inspect() -> None:
        hashlib.sha256(encoded).hexdigest()
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
            image.convert("RGB")

    inspect()
    seconds = []
    for _ in range(repetitions):
        started = time.perf_counter()
        inspect()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure_cpu_float64_flops(rows: int = 2048, width: int = 512, columns: int = 512, repetitions: int = 3) -> float:
    """Floating-point operations per second of a float64 matrix product on the host (numpy's BLAS, as sklearn's)."""
    import numpy as np

    generator = np.random.default_rng(0)
    left, right = generator.standard_normal((rows, width)), generator.standard_normal((width, columns))
    left @ right
    best = math.inf
    for _ in range(repetitions):
        started = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - started)
    return 2.0 * rows * width * columns / max(best, 1e-9)


@contextlib.contextmanager
def _quiet_open_clip():
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def backbone_architecture(entry) -> tuple[str, bool]:
    """(open_clip architecture name, quick GELU) of a catalog backbone entry (models.catalog.BackboneEntry)."""
    import open_clip

    from models.catalog import CatalogError

    if not entry.model_name:
        raise CatalogError(f"backbone {entry.name!r} names no architecture (backbones.yaml: model_name), so its cost "
                         "cannot be measured; add the open_clip architecture name, e.g. model_name: ViT-B-16")
    name = entry.model_name.replace("/", "-")
    tag_config = open_clip.get_pretrained_cfg(name, entry.pretrained) if entry.pretrained else {}
    return name, bool((tag_config or {}).get("quick_gelu", False))
