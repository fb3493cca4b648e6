"""Great Expectations suites on each dataset index, run as blocking asset checks: a failure stops the run
before any few-shot subset, checkpoint or metric row is produced from bad data."""


from collections.abc import Iterator

import dagster as dg

from models.data.expectations import SETTING_EXPECTATIONS

from pipelines.assets.curation import dataset_index, learning_setting_splits
from pipelines.partitions import dataset_partitions
from pipelines.resources import PromptLabResource

# One check per expectation, so the UI shows which property of the data failed.
DATASET_EXPECTATIONS = {
    "index_not_empty": "the split file lists at least one image",
    "files_exist": "every image file named by the split exists",
    "images_decode": "every image file decodes",
    "labels_in_range": "labels are integers in [0, number of classes)",
    "labels_match_classnames": "one class name per label and one label per class name",
    "classes_in_every_split": "every class has images in train, val and test",
    "no_train_test_overlap": "no image (by content hash) is in both train and test",
}


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name, asset=dataset_index, description=description, blocking=True,
                          partitions_def=dataset_partitions)
        for name, description in DATASET_EXPECTATIONS.items()
    ],
)
def dataset_expectations(
    context: dg.AssetCheckExecutionContext, promptlab: PromptLabResource
) -> Iterator[dg.AssetCheckResult]:
    import polars as pl

    from models.data.expectations import validate_dataset_index

    dataset = context.partition_key
    index = pl.read_parquet(promptlab.workspace().index_path(dataset))
    report = validate_dataset_index(index, dataset)
    outcomes = {outcome.name: outcome for outcome in report.outcomes}
    missing = set(DATASET_EXPECTATIONS) - set(outcomes)
    if missing:
        raise RuntimeError(f"the expectation suite did not report {sorted(missing)}")
    for name in DATASET_EXPECTATIONS:
        outcome = outcomes[name]
        yield dg.AssetCheckResult(
            check_name=name,
            asset_key=dataset_index.key,
            passed=outcome.success,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"details": outcome.details, "suite": report.suite_name},
        )


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name, asset=learning_setting_splits, description=description, blocking=True,
                          partitions_def=dataset_partitions)
        for name, description in SETTING_EXPECTATIONS.items()
    ],
)
def learning_setting_expectations(
    context: dg.AssetCheckExecutionContext, promptlab: PromptLabResource
) -> Iterator[dg.AssetCheckResult]:
    """GX on the learning-setting splits: no val/test image in any pool, one role per image, labelled classes
    covered, pools not empty."""
    import polars as pl

    from models.data.expectations import validate_setting_splits

    workspace = promptlab.workspace()
    dataset = context.partition_key
    splits = pl.read_parquet(workspace.setting_splits_path(dataset))
    if splits.height == 0:  # the grid has no setting experiments: nothing to check
        for name in SETTING_EXPECTATIONS:
            yield dg.AssetCheckResult(check_name=name, asset_key=learning_setting_splits.key, passed=True,
                                      metadata={"details": "no learning-setting experiment in the grid"})
        return
    report = validate_setting_splits(splits, pl.read_parquet(workspace.index_path(dataset)), dataset)
    for name in SETTING_EXPECTATIONS:
        outcome = report.outcome(name)
        yield dg.AssetCheckResult(check_name=name, asset_key=learning_setting_splits.key, passed=outcome.success,
                                  severity=dg.AssetCheckSeverity.ERROR,
                                  metadata={"details": outcome.details, "suite": report.suite_name})
