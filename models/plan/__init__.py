"""Run plans: what `promptlab run` would execute for a suite, grid, protocol and backbone, and about how long it takes
on this device, before a GPU-day is spent on it.

    from models.catalog import load_catalog
    from models.plan import calibrated_costs, plan_run

    catalog = load_catalog(suite="coop")
    costs = calibrated_costs("ViT-B-16", quick_gelu=True)   # cached per (architecture, device, threads)
    plan = plan_run(catalog, costs, protocol="few_shot", backbone="ViT-B-16-openai")
    print(plan.render())                                     # "few-shot: coop on 11 datasets (165 partitions): ..."

One concern per module: selection.py (which partitions a run executes), sizes.py (dataset sizes, images each stage
reads), costs.py (the calibration: measured per-image and per-prompt costs), estimate.py (the work priced, rows and
totals), rendering.py (the text), records.py (plans and the actual times of the runs that followed them).
"""

from models.plan.costs import (LinearCost, MeasuredCosts, backbone_architecture, calibrated_costs, calibration_path,
                               default_plans_directory, measure_costs)
from models.plan.estimate import PlanRow, RunPlan, StepShape, plan_run
from models.plan.records import record_actual, save_plan
from models.plan.rendering import format_duration, render_plan
from models.plan.selection import RunSelection, run_selection
from models.plan.sizes import DatasetSize, dataset_sizes

__all__ = ["DatasetSize", "LinearCost", "MeasuredCosts", "PlanRow", "RunPlan", "RunSelection", "StepShape",
           "backbone_architecture", "calibrated_costs", "calibration_path", "dataset_sizes", "default_plans_directory",
           "format_duration", "measure_costs", "plan_for_backbone", "plan_run", "record_actual", "render_plan",
           "run_selection", "save_plan"]


def plan_for_backbone(catalog, backbone: str | None = None, device: str | None = None, recalibrate: bool = False,
                      directory=None, log=None, **selection) -> RunPlan:
    """plan_run with the calibration of the catalog backbone's architecture on this device (cached in `directory`,
    default <workspace>/plans); `selection`: datasets, experiments, protocol, counts_from_disk, sizes."""
    entry = catalog.backbone(backbone)
    architecture, quick_gelu = backbone_architecture(entry)
    costs = calibrated_costs(architecture, device, recalibrate, directory, quick_gelu, log)
    return plan_run(catalog, costs, backbone=entry.name, **selection)
