"""A run plan as text: one line per protocol and method ("few-shot: coop on 11 datasets (165 partitions): about
14.2 h"), the totals per protocol and overall, the device and backbone, and what the estimate leaves out."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.plan.estimate import PlanRow, RunPlan

PROTOCOL_NAMES = {"data": "data", "zero_shot": "zero-shot", "few_shot": "few-shot", "base_to_new": "base-to-new",
                  "transfer": "transfer", "test_time": "test-time"}


def format_duration(seconds: float) -> str:
    """'40 s', '35 min', '14.2 h', '3.1 days (74 h)'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days ({hours:,.0f} h)"


def protocol_name(protocol: str) -> str:
    return PROTOCOL_NAMES.get(protocol, protocol)


def render_plan(plan: "RunPlan") -> str:
    costs = plan.costs
    scope = f"protocol {protocol_name(plan.protocol)}" if plan.protocol else "every protocol"
    lines = [
        f"Run plan: suite {plan.suite or '(embedded world)'}, grid {plan.grid}, {scope}; backbone {plan.backbone} "
        f"({costs.architecture})",
        f"Device: {costs.description}; calibrated {costs.measured_on} with torch {costs.torch_version} "
        f"(random weights, {costs.calibration_seconds:.0f} s)",
        f"Measured: image forward {_per(costs.image_forward.per_item)}/image, forward+backward "
        f"{_per(costs.image_train.per_item)}/image; text forward {_per(costs.text_forward.per_item)}/prompt, "
        f"forward+backward {_per(costs.text_train.per_item)}/prompt; JPEG decode {_per(costs.decode_seconds)}",
        *([f"Warning: calibrated while other processes kept the cores busy (load {costs.load_average:g} on "
           f"{costs.cpu_count} CPUs): these costs, and the times below, may be several times too high; "
           "`promptlab plan --recalibrate` on an idle machine measures them again"]
          if costs.taken_beside_load else []),
        "",
    ]
    for protocol, method, rows in _lines_of(plan.rows):
        lines.append(f"  {_describe(protocol, method, rows)}: about {format_duration(sum(r.seconds for r in rows))}")
    lines.append("")
    per_protocol = ", ".join(f"{protocol_name(protocol)} {format_duration(seconds)}"
                             for protocol, seconds in plan.totals_by_protocol().items())
    lines.append(f"Per protocol: {per_protocol}")
    lines.append(f"Total: about {format_duration(plan.total_seconds)} on {_device_phrase(costs)}, {plan.backbone}")
    lines.append("")
    lines += [f"Note: {note}" for note in plan.notes]
    return "\n".join(lines)


def _device_phrase(costs) -> str:
    """'one GPU (NVIDIA H100 80GB HBM3)' or 'this CPU (AMD EPYC, 2 threads)'."""
    if costs.device == "cuda":
        return f"one GPU ({costs.device_name})"
    return f"this CPU ({costs.device_name}, {costs.threads} threads)"


def _per(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _lines_of(rows: list["PlanRow"]) -> list[tuple[str, str | None, list["PlanRow"]]]:
    """Rows grouped by (protocol, method), in plan order (the data stages together)."""
    grouped: dict[tuple, list] = defaultdict(list)
    for row in rows:
        grouped[(row.protocol, row.method)].append(row)
    return [(protocol, method, group) for (protocol, method), group in grouped.items()]


def _describe(protocol: str, method: str | None, rows: list["PlanRow"]) -> str:
    datasets = list(dict.fromkeys(name for row in rows for name in row.datasets))
    name = protocol_name(protocol)
    if protocol == "data":
        inspected = sum(row.images for row in rows if row.stage == "curation")
        encoded = sum(row.images for row in rows if row.stage == "features")
        return (f"{name}: curation + features on {_count(datasets, 'dataset')} ({inspected:,} images inspected, "
                f"{encoded:,} encoded)")
    if protocol in ("transfer", "test_time"):
        stage_rows = [row for row in rows if row.stage == protocol]
        if stage_rows:
            partitions = sum(row.partitions for row in stage_rows)
            images = sum(row.images for row in stage_rows)
            targets = list(dict.fromkeys(name for row in stage_rows for name in row.datasets))
            sources = ", ".join(dict.fromkeys(name for row in stage_rows for name in row.sources))
            trained = [row for row in rows if row.stage == "training"]
            extra = f", {sum(row.partitions for row in trained)} checkpoints trained" if trained else ""
            return (f"{name}: {method} from {sources} to {_count(targets, 'dataset')} "
                    f"({_count(range(partitions), 'partition')}, {images:,} test images{extra})")
    partitions = max(row.partitions for row in rows)
    steps = sum(row.steps for row in rows)
    counted = f"{_count(range(partitions), 'partition')}" + (f", {steps:,} steps" if steps else "")
    return f"{name}: {method} on {_count(datasets, 'dataset')} ({counted})"


def _count(items, noun: str) -> str:
    count = len(list(items))
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
