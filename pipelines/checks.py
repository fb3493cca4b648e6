"""Great Expectations suites on each dataset index, run as blocking asset checks: a failure stops the run
before any few-shot subset, checkpoint or metric row is produced from bad data."""


from collections.abc import Iterator

import dagster as dg

from pipelines.assets import sync as folders
from pipelines.assets.curation import dataset_index, learning_setting_splits
from pipelines.assets.sync import synced
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
    "no_near_duplicates_across_splits": "no two images in different splits are near-duplicates (re-saved, "
                                        "re-encoded, resized copies; threshold and allow-list in datasets.yaml)",
}
# The learning-setting splits (models.data.expectations.validate_setting_splits): one check each.
SETTING_EXPECTATIONS = {
    "setting_rows_are_train_images": "every labelled or pooled image is a training image of the index",
    "one_role_per_image": "within a split an image is labelled train, labelled val or unlabelled, never two",
    "no_eval_image_in_pool": "no pooled image has the content of a val or test image",
    "labelled_class_coverage": "every class the setting labels (SSL: all, TRZSL: seen) has a labelled training image",
    "pools_not_empty": "every split's unlabelled pool holds at least one image",
    "trzsl_pool_unseen_only": "TRZSL pools only hold unseen-class images (seen classes are fully labelled)",
}


def _check_results(report, names, asset_key: dg.AssetKey) -> Iterator[dg.AssetCheckResult]:
    """One blocking result per expectation of a GX report (models.data.expectations.ValidationReport)."""
    outcomes = {outcome.name: outcome for outcome in report.outcomes}
    missing = set(names) - set(outcomes)
    if missing:
        raise RuntimeError(f"the expectation suite did not report {sorted(missing)}")
    for name in names:
        outcome = outcomes[name]
        yield dg.AssetCheckResult(check_name=name, asset_key=asset_key, passed=outcome.success,
                                  severity=dg.AssetCheckSeverity.ERROR,
                                  metadata={"details": outcome.details, "suite": report.suite_name})


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name, asset=dataset_index, description=description, blocking=True,
                          partitions_def=dataset_partitions)
        for name, description in DATASET_EXPECTATIONS.items()
    ],
)
@synced(writes=(folders.curation,))  # promotes the staged index in the curation folder
def dataset_expectations(
    context: dg.AssetCheckExecutionContext, promptlab: PromptLabResource
) -> Iterator[dg.AssetCheckResult]:
    """GX on the staged index (the promoted one when the checks run alone); promotes it to index.parquet only when
    no blocking (ERROR) check failed, and records the outcome either way (models.data.validated_index), so no later
    stage reads an index that failed."""
    from models.data.curation import read_listing_record
    from models.data.expectations import validate_dataset_index
    from models.data.validated_index import index_to_validate, record_validation
    from models.storage import read_parquet_file

    workspace, dataset = promptlab.workspace(), context.partition_key
    # what the layout reader declared (test-only, val is test, duplicate names): relaxed checks say so
    structure = read_listing_record(workspace.listing_path(dataset))["structure"]
    report = validate_dataset_index(read_parquet_file(index_to_validate(workspace, dataset)), dataset,
                                    promptlab.catalog().dataset(dataset).near_duplicates, structure)
    results = list(_check_results(report, DATASET_EXPECTATIONS, dataset_index.key))
    failed = {r.check_name: r.metadata["details"].value for r in results
              if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR}
    promoted = record_validation(workspace, dataset, [r.check_name for r in results if r.passed], failed)
    context.log.info(f"{dataset}: index promoted to {promoted}" if promoted else
                     f"{dataset}: index rejected by {sorted(failed)}; {workspace.index_path(dataset)} is unchanged")
    yield from results


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name, asset=learning_setting_splits, description=description, blocking=True,
                          partitions_def=dataset_partitions)
        for name, description in SETTING_EXPECTATIONS.items()
    ],
)
@synced(reads=(folders.curation,))
def learning_setting_expectations(
    context: dg.AssetCheckExecutionContext, promptlab: PromptLabResource
) -> Iterator[dg.AssetCheckResult]:
    """GX on the learning-setting splits: no val/test image in any pool, one role per image, labelled classes
    covered, pools not empty."""
    from models.data.expectations import validate_setting_splits
    from models.data.validated_index import read_validated_index
    from models.storage import read_parquet_file

    workspace = promptlab.workspace()
    dataset = context.partition_key
    splits = read_parquet_file(workspace.setting_splits_path(dataset))
    if splits.height == 0:  # the grid has no setting experiments: nothing to check
        for name in SETTING_EXPECTATIONS:
            yield dg.AssetCheckResult(check_name=name, asset_key=learning_setting_splits.key, passed=True,
                                      metadata={"details": "no learning-setting experiment in the grid"})
        return
    report = validate_setting_splits(splits, read_validated_index(workspace, dataset), dataset)
    yield from _check_results(report, SETTING_EXPECTATIONS, learning_setting_splits.key)
