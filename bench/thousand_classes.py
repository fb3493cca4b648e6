"""Peak memory and time of one training step at ImageNet's 1000 classes, text passes chunked against unchunked:
`flock /tmp/promptlab-cpu.lock .venv/bin/python -m bench.thousand_classes` (`--help` lists the options).

What runs: one step of `train_prompt_parameters` (the pipeline's loop: forward, backward, SGD update) of CoOp (batch
32, its ImageNet config) and of CoCoOp (batch 1, its config) on cached-feature-shaped inputs (random image features:
both methods' image tower is frozen, so a step never touches it), with ImageNet's 1000 class names (open_clip's
list), on the ViT-B-16 architecture with seeded random weights (`open_clip.create_model(..., pretrained=None)`,
frozen as models/backbones/loader.py freezes a backbone), fp32 on the CPU, with the methods' published parameters.
"Chunked" is the default text_chunk_size (models/prompting/text_passes.py: passes of 128 prompts, checkpointed);
"unchunked" is one pass of every prompt. Unchunked at 1000 classes needs about 19.6 MB per prompt for the backward
(19.6 GB): it runs only where the machine has the memory (estimated from the unchunked step at `--pair-classes`), so
the ratio is also measured at `--pair-classes` (256), where both fit. A last case is the test's
(tests/prompting/test_thousand_classes.py): CoOp at 1000 classes, batch 2, with the text tower cut to its first
block so that the step fits the test's minute; its chunked figure and the margin go to bench/measured/.

How memory is measured: torch has no allocator statistics on the CPU (torch.cuda.max_memory_allocated has no CPU
twin), so every case runs in a fresh process and reads the kernel's peak resident set (VmHWM in /proc/self/status),
reset (/proc/self/clear_refs) after the model, classifier and inputs are built and freed memory is handed back to
the OS; the figure is that peak minus the resident set just before the step ("rise"). The resident set counts what
glibc's malloc keeps after torch frees it, and with glibc's defaults it keeps a lot: its mmap threshold rises to the
size of the largest block freed (up to 32 MiB), after which a pass's activations come from the heap, and the heap
then grows by part of every pass (a chunked 1000-class CoOp step rose 12.0 GB, though its tensors peak near one
pass's 2.5 GB). So by default the children run with the threshold fixed at glibc's initial 128 KiB
(MALLOC_MMAP_THRESHOLD_=131072): blocks above it are mapped and unmapped one by one, and the rise is what the
step's tensors need. `--glibc-default` measures with glibc's defaults instead (a separate run; the device names
the setting). The time is the same single step (the first of a fresh process, so it includes first-touch page
faults of its memory, on both sides alike); a step of 1000 classes takes minutes on 2 cores, so each case runs once.

Recorded: one `thousand-classes` benchmark run in the configured warehouse (rows named method/classes, variants
chunked and unchunked, the unchunked one the baseline), bench/results/thousand_classes.json, and the table with
the chunked/unchunked ratios side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.measure import current_rss_mb, peak_rss_mb, release_freed_memory, reset_peak_rss
from bench.throughput import _write_json_atomically
from models.prompting.text_passes import DEFAULT_TEXT_CHUNK_SIZE
from models.provenance import PACKAGE_ROOT, git_commit, library_code_version

BENCHMARK = "thousand-classes"
DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "thousand_classes.json"
GLIBC_DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "thousand_classes-glibc-default.json"
# What tests/prompting/test_thousand_classes.py reads: the test's case, its measured rise and the margin it allows.
MEASURED_FIGURE = PACKAGE_ROOT / "bench" / "measured" / "thousand_classes.json"
# The test's step may need this much more than the bench measured (allocator and thread-scratch noise between runs);
# losing the chunking costs 5x or more there.
TEST_MARGIN = 0.25
CHILD_TIMEOUT_SECONDS = 3600
# glibc's initial mmap threshold; setting it fixes it (no rise after frees), see the module docstring
FIXED_MMAP_THRESHOLD = 131072
TEMPLATES = ["a photo of a {}."]
MEASURE = ("peak RSS (VmHWM, /proc/self/status) of a fresh process, reset after setup; rise = that peak minus "
           "the RSS just before the step (torch has no CPU allocator statistics)")


@dataclass(frozen=True)
class StepCase:
    """One training step to measure."""

    method: str  # "coop" or "cocoop"
    n_classes: int  # the first n of ImageNet's class names
    batch_size: int
    chunked: bool  # passes of text_chunk_size prompts, or one pass of all of them
    text_chunk_size: int = DEFAULT_TEXT_CHUNK_SIZE
    text_blocks: int | None = None  # the text tower cut to its first blocks (the test's case); None: every block
    architecture: str = "ViT-B-16"
    seed: int = 0

    @property
    def prompts(self) -> int:
        """Text-tower prompts of one step: one per class, CoCoOp's one per image and class."""
        return self.n_classes * (self.batch_size if self.method == "cocoop" else 1)

    @property
    def prompts_per_pass(self) -> int:
        return self.text_chunk_size if self.chunked else self.prompts

    @property
    def name(self) -> str:
        """The row's method column: method, classes and any cut (the variant says chunked or not)."""
        blocks = f", text tower cut to {self.text_blocks} block(s)" if self.text_blocks else ""
        return f"{self.method}/{self.n_classes} classes{blocks}"


def random_clip(architecture: str, seed: int, text_blocks: int | None = None):
    """(model, tokenizer): the architecture with seeded random weights, frozen in eval mode as the backbone loader
    leaves a backbone; text_blocks keeps only the text tower's first blocks."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(architecture, pretrained=None)
    model = model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if text_blocks is not None:
        blocks = model.transformer.resblocks
        if not 1 <= text_blocks <= len(blocks):
            raise ValueError(f"text_blocks must be in 1..{len(blocks)}, got {text_blocks}")
        model.transformer.resblocks = blocks[:text_blocks]
        model.transformer.layers = text_blocks
    return model, open_clip.get_tokenizer(architecture)


def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def measure_step(case: StepCase, hash_weights: bool = True) -> dict[str, Any]:
    """One training step of the case in this process: its seconds and the peak RSS rise over the step."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from models.experiments import build_classifier
    from models.prompting.methods.cocoop import joint_embedding_dim
    from models.prompting.training import OptimizationConfig, train_prompt_parameters

    if case.n_classes > len(IMAGENET_CLASSNAMES):
        raise ValueError(f"at most {len(IMAGENET_CLASSNAMES)} classes, got {case.n_classes}")
    model, tokenizer = random_clip(case.architecture, case.seed, case.text_blocks)
    classnames = list(IMAGENET_CLASSNAMES[: case.n_classes])
    classifier = build_classifier(model, tokenizer, case.method, {"text_chunk_size": case.prompts_per_pass},
                                  classnames, TEMPLATES)
    generator = torch.Generator().manual_seed(case.seed)
    features = torch.randn(case.batch_size, joint_embedding_dim(classifier.text_tower), generator=generator)
    labels = torch.randint(case.n_classes, (case.batch_size,), generator=generator)
    config = OptimizationConfig(epochs=1, batch_size=case.batch_size, warmup_epochs=0, seed=case.seed)
    release_freed_memory()
    if not reset_peak_rss():
        raise RuntimeError("the peak RSS cannot be reset here (/proc/self/clear_refs): this bench needs Linux")
    rss_before = current_rss_mb()
    started = time.perf_counter()
    history = train_prompt_parameters(classifier, features, labels, config)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    if history.steps != 1:
        raise RuntimeError(f"expected one training step, ran {history.steps}")
    return {
        "case": asdict(case), "name": case.name, "prompts": case.prompts, "prompts_per_pass": case.prompts_per_pass,
        "passes": math.ceil(case.prompts / case.prompts_per_pass), "seconds": seconds, "peak_rss_mb": peak,
        "rss_before_mb": rss_before, "rise_mb": peak - rss_before, "loss": history.epoch_losses[0],
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "weights_sha256": weights_sha256(model) if hash_weights else None,
    }


def allocator_environment(mmap_threshold: int | None) -> dict[str, str]:
    """The environment that sets the child's malloc up: a fixed mmap threshold, or nothing (glibc's defaults)."""
    return {} if mmap_threshold is None else {"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)}


def measure_in_fresh_process(case: StepCase, scratch: Path, hash_weights: bool = True,
                             threads: int | None = None, allocator: dict[str, str] | None = None) -> dict[str, Any]:
    """measure_step in a child process of its own (its peak RSS is the case's alone), with the allocator settings
    `allocator` (environment variables read when the process starts)."""
    result_path = Path(scratch) / f"result-{uuid.uuid4().hex}.json"
    command = [sys.executable, "-m", "bench.thousand_classes", "--child", json.dumps(asdict(case)),
               "--result", str(result_path)] + ([] if hash_weights else ["--no-weights-hash"])
    if threads:
        command += ["--threads", str(threads)]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment = {**inherited, **(allocator or {}),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(command, cwd=PACKAGE_ROOT, env=environment, capture_output=True, text=True,
                               timeout=CHILD_TIMEOUT_SECONDS)
    if completed.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"{case.name} ({'chunked' if case.chunked else 'unchunked'}) failed with exit code "
                           f"{completed.returncode}; its output ended with:\n"
                           f"{(completed.stderr or completed.stdout)[-3000:]}")
    return json.loads(result_path.read_text())


def available_memory_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class BenchOptions:
    workspace: Path | None = None  # None: the default workspace (its warehouse, $PROMPTLAB_WAREHOUSE)
    architecture: str = "ViT-B-16"
    n_classes: int = 1000
    pair_classes: int = 256  # where chunked and unchunked both fit
    coop_batch: int = 32
    cocoop_batch: int = 1
    test_batch: int = 2
    test_text_blocks: int = 1
    text_chunk_size: int = DEFAULT_TEXT_CHUNK_SIZE
    methods: tuple[str, ...] = ("coop", "cocoop")
    threads: int | None = None
    mmap_threshold: int | None = FIXED_MMAP_THRESHOLD  # None: glibc's defaults (module docstring)
    record: bool = True
    output: Path | None = DEFAULT_OUTPUT
    measured_figure: Path | None = MEASURED_FIGURE


def plan_cases(options: BenchOptions) -> list[tuple[StepCase, StepCase | None]]:
    """(chunked, unchunked) pairs, small first; the unchunked side of the full class count is decided at run time."""
    batches = {"coop": options.coop_batch, "cocoop": options.cocoop_batch}
    common = {"architecture": options.architecture, "text_chunk_size": options.text_chunk_size}
    test = StepCase("coop", options.n_classes, options.test_batch, True, text_blocks=options.test_text_blocks,
                    **common)
    pairs: list[tuple[StepCase, StepCase | None]] = [(test, dataclasses.replace(test, chunked=False))]
    for method in options.methods:
        for n_classes in (options.pair_classes, options.n_classes):
            chunked = StepCase(method, n_classes, batches[method], True, **common)
            pairs.append((chunked, dataclasses.replace(chunked, chunked=False)))
    return pairs


def unchunked_fits(case: StepCase, measured: list[dict[str, Any]]) -> tuple[bool, float | None]:
    """Whether the unchunked step should run here: its rise estimated from a smaller unchunked step of the same
    method and tower (linear in prompts), against the memory the machine has available now."""
    smaller = [m for m in measured if m["case"]["method"] == case.method and not m["case"]["chunked"]
               and m["case"]["text_blocks"] == case.text_blocks and m["prompts"] < case.prompts]
    if not smaller:
        return True, None
    reference = max(smaller, key=lambda m: m["prompts"])
    estimate = reference["rise_mb"] * case.prompts / reference["prompts"]
    available = available_memory_mb()
    return available is None or estimate < 0.8 * available, estimate


def run_benchmark(options: BenchOptions) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    bench_run_id = f"bench-{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    load_before = round(os.getloadavg()[0], 2)
    measured: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="promptlab-thousand-") as scratch:
        for chunked, unchunked in plan_cases(options):
            for case in (chunked, unchunked):
                fits, estimate = unchunked_fits(case, measured) if not case.chunked else (True, None)
                if not fits:
                    skipped.append({"case": asdict(case), "name": case.name, "prompts": case.prompts,
                                    "estimated_rise_mb": round(estimate),
                                    "available_mb": round(available_memory_mb() or 0),
                                    "why": "does not fit this machine's memory (estimate linear in prompts from "
                                           "the smaller unchunked step)"})
                    print(f"skipped {case.name} unchunked: needs about {estimate / 1024:.1f} GB", file=sys.stderr)
                    continue
                print(f"measuring {case.name} ({'chunked' if case.chunked else 'unchunked'}, batch "
                      f"{case.batch_size}, {case.prompts} prompts)", file=sys.stderr, flush=True)
                measured.append(measure_in_fresh_process(case, Path(scratch), threads=options.threads,
                                                         allocator=allocator_environment(options.mmap_threshold)))
    finished_at = datetime.now(UTC)
    result = {"bench_run_id": bench_run_id, "started_at": str(started_at), "finished_at": str(finished_at),
              "git_commit": git_commit(), "code_version": library_code_version(),
              "device": describe_device(options.mmap_threshold), "torch_version": torch.__version__,
              "architecture": options.architecture, "measure": MEASURE,
              "allocator_environment": allocator_environment(options.mmap_threshold),
              "load_average_1min_before": load_before, "options": _jsonable(asdict(options)),
              "measured": measured, "skipped": skipped, "ratios": ratios(measured)}
    if options.record:
        result["warehouse"] = record(result, options)
    if options.output is not None:
        _write_json_atomically(Path(options.output), result)
    if options.measured_figure is not None:
        _write_json_atomically(Path(options.measured_figure), figure_for_the_test(result, options))
    return result


def ratios(measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chunked over unchunked, per case measured both ways."""
    by_key = {(m["name"], m["case"]["batch_size"], m["case"]["chunked"]): m for m in measured}
    rows = []
    for (name, batch, chunked), m in by_key.items():
        other = by_key.get((name, batch, False)) if chunked else None
        if other is not None:
            rows.append({"name": name, "batch_size": batch, "rise_ratio": m["rise_mb"] / other["rise_mb"],
                         "time_ratio": m["seconds"] / other["seconds"]})
    return rows


def figure_for_the_test(result: dict[str, Any], options: BenchOptions) -> dict[str, Any]:
    """What the test reads: its case, the chunked rise measured here, the margin and the bound it implies."""
    test_case = plan_cases(options)[0][0]
    (figure,) = [m for m in result["measured"] if m["case"] == asdict(test_case)]
    unchunked = [m for m in result["measured"] if m["case"] == asdict(dataclasses.replace(test_case, chunked=False))]
    return {
        "what": "peak RSS rise of one chunked CoOp training step, as tests/prompting/test_thousand_classes.py runs it",
        "case": asdict(test_case), "rise_mb": round(figure["rise_mb"], 1), "seconds": round(figure["seconds"], 1),
        "margin": TEST_MARGIN, "allowed_rise_mb": round(figure["rise_mb"] * (1 + TEST_MARGIN), 1),
        "unchunked_rise_mb": round(unchunked[0]["rise_mb"], 1) if unchunked else None,
        # the test's process must allocate as the bench's did
        "allocator_environment": result["allocator_environment"], "measure": MEASURE, "device": result["device"],
        "torch_version": result["torch_version"],
        "bench_run_id": result["bench_run_id"], "git_commit": result["git_commit"],
        "measured_at": result["finished_at"],
    }


def record(result: dict[str, Any], options: BenchOptions) -> str:
    """The run as one `thousand-classes` benchmark run in the workspace's warehouse; returns its address."""
    from models.warehouse import BenchmarkRow, BenchmarkRun, workspace_warehouse_of
    from models.workspace import Workspace, default_workspace_root

    measured = result["measured"]
    unchunked_names = {m["name"] for m in measured if not m["case"]["chunked"]}
    rows = [BenchmarkRow(
        method=m["name"], variant="chunked" if m["case"]["chunked"] else "unchunked",
        batch_size=m["case"]["batch_size"], n_images=m["case"]["batch_size"], seconds=m["seconds"],
        images_per_second=m["case"]["batch_size"] / m["seconds"], peak_rss_mb=m["peak_rss_mb"],
        rss_delta_mb=m["rise_mb"],
        baseline_variant="unchunked" if m["case"]["chunked"] and m["name"] in unchunked_names else None,
        details={key: m[key] for key in ("case", "prompts", "prompts_per_pass", "passes", "rss_before_mb", "loss",
                                         "threads", "load_average_1min")} | {"measure": MEASURE, "unit": "one step"},
    ) for m in measured]
    sha = next((m["weights_sha256"] for m in measured if m["weights_sha256"]), "unknown")
    run = BenchmarkRun(
        bench_run_id=result["bench_run_id"], started_at=datetime.fromisoformat(result["started_at"]),
        finished_at=datetime.fromisoformat(result["finished_at"]), git_commit=result["git_commit"],
        code_version=result["code_version"], device=result["device"], torch_version=result["torch_version"],
        backbone=options.architecture, backbone_weights_sha256=sha,
        weights_source="random (open_clip.create_model, pretrained=None, seed 0)",
        dataset=f"random image features, ImageNet's class names ({options.n_classes} and {options.pair_classes})",
        benchmark=BENCHMARK, load_average=result["load_average_1min_before"])
    workspace = Workspace(Path(options.workspace) if options.workspace else default_workspace_root())
    warehouse = workspace_warehouse_of(workspace)
    warehouse.record_benchmark(run, rows)
    return warehouse.address


def describe_device(mmap_threshold: int | None) -> str:
    import platform

    allocator = "" if mmap_threshold is None else f", glibc mmap threshold fixed at {mmap_threshold} bytes"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()}, {os.cpu_count()} cores), fp32{allocator}"


def format_table(result: dict[str, Any]) -> str:
    by_key = {(m["name"], m["case"]["batch_size"], m["case"]["chunked"]): m for m in result["measured"]}
    skipped = {(s["name"], s["case"]["batch_size"]): s for s in result["skipped"]}
    lines = [f"{'case':<52}{'batch':>6}{'prompts':>9}  {'chunked s / rise MB':>22}  {'unchunked s / rise MB':>24}"
             f"  {'time x':>7}{'memory x':>9}"]
    for name, batch in dict.fromkeys((n, b) for n, b, _ in by_key):
        chunked, unchunked = by_key.get((name, batch, True)), by_key.get((name, batch, False))
        left = f"{chunked['seconds']:.1f} / {chunked['rise_mb']:.0f}" if chunked else "-"
        if unchunked:
            right = f"{unchunked['seconds']:.1f} / {unchunked['rise_mb']:.0f}"
        elif (name, batch) in skipped:
            right = f"does not fit (~{skipped[(name, batch)]['estimated_rise_mb']:.0f})"
        else:
            right = "-"
        time_ratio = f"{chunked['seconds'] / unchunked['seconds']:.2f}" if chunked and unchunked else ""
        memory_ratio = f"{chunked['rise_mb'] / unchunked['rise_mb']:.3f}" if chunked and unchunked else ""
        prompts = (chunked or unchunked)["prompts"]
        lines.append(f"{name:<52}{batch:>6}{prompts:>9}  {left:>22}  {right:>24}  {time_ratio:>7}{memory_ratio:>9}")
    lines.append(f"device: {result['device']}; torch {result['torch_version']}; {result['architecture']} random "
                 f"weights; chunked = passes of {result['options']['text_chunk_size']} prompts (checkpointed); "
                 f"time x and memory x: chunked over unchunked")
    lines.append(f"memory: {result['measure']}")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def parse_options(argv: list[str] | None = None) -> tuple[argparse.Namespace, BenchOptions]:
    defaults = BenchOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.thousand_classes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--architecture", default=defaults.architecture)
    parser.add_argument("--classes", type=int, default=defaults.n_classes)
    parser.add_argument("--pair-classes", type=int, default=defaults.pair_classes,
                        help="class count where unchunked is measured beside chunked whatever the machine")
    parser.add_argument("--coop-batch", type=int, default=defaults.coop_batch)
    parser.add_argument("--cocoop-batch", type=int, default=defaults.cocoop_batch)
    parser.add_argument("--test-batch", type=int, default=defaults.test_batch)
    parser.add_argument("--test-text-blocks", type=int, default=defaults.test_text_blocks)
    parser.add_argument("--text-chunk-size", type=int, default=defaults.text_chunk_size)
    parser.add_argument("--methods", default=",".join(defaults.methods))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--glibc-default", action="store_true",
                        help="measure with glibc malloc's defaults, not a fixed mmap threshold (module docstring); "
                             "does not rewrite the test's figure")
    parser.add_argument("--no-warehouse", action="store_true")
    parser.add_argument("--output", type=Path, default=defaults.output)
    parser.add_argument("--no-measured-figure", action="store_true",
                        help=f"do not rewrite {MEASURED_FIGURE.relative_to(PACKAGE_ROOT)} (the test's bound)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-weights-hash", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    options = BenchOptions(
        workspace=args.workspace, architecture=args.architecture, n_classes=args.classes,
        pair_classes=args.pair_classes, coop_batch=args.coop_batch, cocoop_batch=args.cocoop_batch,
        test_batch=args.test_batch, test_text_blocks=args.test_text_blocks, text_chunk_size=args.text_chunk_size,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), threads=args.threads,
        mmap_threshold=None if args.glibc_default else FIXED_MMAP_THRESHOLD, record=not args.no_warehouse,
        output=args.output if not args.glibc_default or args.output != defaults.output else GLIBC_DEFAULT_OUTPUT,
        measured_figure=None if args.no_measured_figure or args.glibc_default else MEASURED_FIGURE)
    return args, options


def main(argv: list[str] | None = None) -> int:
    args, options = parse_options(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        result = measure_step(StepCase(**json.loads(args.child)), hash_weights=not args.no_weights_hash)
        _write_json_atomically(args.result, result)
        return 0
    result = run_benchmark(options)
    print(format_table(result))
    where = [str(options.output)] if options.output else []
    if options.record:
        where.append(f"{result['warehouse']} (benchmark_results, latest_benchmark)")
    if options.measured_figure is not None:
        where.append(str(options.measured_figure))
    print(f"bench run {result['bench_run_id']} written to {' and '.join(where) or 'nowhere'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
