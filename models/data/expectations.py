"""Great Expectations 1.x validation of a dataset index (see ``models.data.index``).

GX validates pandas, so the Polars index is converted at this boundary. Where GX has no direct
expectation (label/classname consistency, train/test content overlap, near-duplicates across splits
(``models.data.near_duplicates``), class coverage per split) a
helper column or a small derived table is computed here, and a real GX expectation decides pass or
fail on it; the details text then names the offending rows from GX's ``unexpected_index_list``.

Each check is its own ``ExpectationOutcome`` so that an orchestrator can show them separately.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import polars as pl

from models.data.datasets import SPLITS, DatasetFormatError, classname_votes, expected_classnames
from models.data.layouts.listing import DatasetStructure
from models.data.near_duplicates import THUMBNAIL_COLUMN, NearDuplicatePolicy, find_near_duplicates

REQUIRED_COLUMNS: tuple[str, ...] = (
    "relative_path", "label", "classname", "split", "file_exists", "decodes", "content_sha256", THUMBNAIL_COLUMN,
)
DETAIL_PREVIEW_COUNT = 10


@dataclass(frozen=True)
class ExpectationOutcome:
    name: str
    success: bool
    details: str  # names the offending rows/files when it fails


@dataclass(frozen=True)
class ValidationReport:
    suite_name: str
    success: bool
    outcomes: list[ExpectationOutcome]

    def outcome(self, name: str) -> ExpectationOutcome:
        for outcome in self.outcomes:
            if outcome.name == name:
                return outcome
        raise KeyError(f"no expectation named {name!r}; have {[outcome.name for outcome in self.outcomes]}")

    @property
    def failed_names(self) -> list[str]:
        return [outcome.name for outcome in self.outcomes if not outcome.success]


def _preview(items: list[str], noun: str) -> str:
    shown = "; ".join(items[:DETAIL_PREVIEW_COUNT])
    more = f" ... (+{len(items) - DETAIL_PREVIEW_COUNT} more)" if len(items) > DETAIL_PREVIEW_COUNT else ""
    return f"{len(items)} {noun}: {shown}{more}"


def _row_names(rows: pd.DataFrame) -> list[str]:
    return [f"{path} ({split})" for path, split in zip(rows["relative_path"], rows["split"])]


# ---------------------------------------------------------------------------------------------
# Helper columns and tables (computed in Polars, before the pandas boundary)
# ---------------------------------------------------------------------------------------------


def _canonical_label_by_classname(index: pl.DataFrame) -> dict[str, int]:
    """Majority label of each classname (ties: smallest label)."""
    votes: dict[str, Counter[int]] = {}
    for label, classname_counts in classname_votes(index).items():
        for classname, count in classname_counts.items():
            votes.setdefault(classname, Counter())[label] = count
    return {
        classname: min(label_counts.items(), key=lambda item: (-item[1], item[0]))[0]
        for classname, label_counts in votes.items()
    }


def _with_helper_columns(
    index: pl.DataFrame, canonical_classname: dict[int, str], canonical_label: dict[str, int],
    near_duplicates: pl.DataFrame, duplicate_classnames: tuple[str, ...] = (),
) -> pl.DataFrame:
    train_hashes = index.filter(pl.col("split") == "train").get_column("content_sha256").drop_nulls().unique()
    test_hashes = index.filter(pl.col("split") == "test").get_column("content_sha256").drop_nulls().unique()
    hashes_in_both = train_hashes.filter(train_hashes.is_in(test_hashes.implode())).to_list()
    # (path, split) of every image in a near-duplicate pair, joined as one key so a path listed in two splits is
    # marked only where it is paired.
    paired = [f"{path}\n{split}" for side in ("a", "b")
              for path, split in near_duplicates.select(f"path_{side}", f"split_{side}").iter_rows()]
    label_dtype = index.schema["label"]
    canonical_names = pl.DataFrame(
        {"label": list(canonical_classname), "canonical_classname": list(canonical_classname.values())},
        schema={"label": label_dtype, "canonical_classname": pl.String},
    )
    canonical_labels = pl.DataFrame(
        {"classname": list(canonical_label), "canonical_label": list(canonical_label.values())},
        schema={"classname": pl.String, "canonical_label": label_dtype},
    )
    return (
        index.join(canonical_names, on="label", how="left", maintain_order="left")
        .join(canonical_labels, on="classname", how="left", maintain_order="left")
        .with_columns(
            # Null for missing files, so a missing file fails only "files_exist" (GX skips nulls).
            pl.when(pl.col("file_exists")).then(pl.col("decodes")).otherwise(None).alias("decodes_when_present"),
            (
                (pl.col("classname") == pl.col("canonical_classname"))
                # a name the dataset declares under several labels (CLIP's ImageNet list) names each of them
                & ((pl.col("label") == pl.col("canonical_label"))
                   | pl.col("classname").is_in(list(duplicate_classnames)))
            ).alias("label_matches_classname"),
            (pl.col("split").is_in(["train", "test"]) & pl.col("content_sha256").is_in(hashes_in_both)).alias(
                "shared_between_train_and_test"
            ),
            pl.concat_str("relative_path", "split", separator="\n").is_in(paired).alias(
                "near_duplicate_across_splits"
            ),
        )
        # The thumbnails have served (near_duplicates); GX need not carry 192 bytes a row into pandas.
        .drop("canonical_classname", "canonical_label", THUMBNAIL_COLUMN)
    )


def _class_split_coverage(index: pl.DataFrame, canonical_classname: dict[int, str],
                          splits: tuple[str, ...] = SPLITS) -> pl.DataFrame:
    """One row per (label, split) of `splits` with its image count, including zero counts."""
    all_pairs = pl.DataFrame(
        [(label, classname, split) for label, classname in sorted(canonical_classname.items()) for split in splits],
        schema={"label": pl.Int64, "classname": pl.String, "split": pl.String},
        orient="row",
    )
    counts = index.group_by(["label", "split"]).len("image_count").with_columns(pl.col("label").cast(pl.Int64))
    return all_pairs.join(counts, on=["label", "split"], how="left").with_columns(
        pl.col("image_count").fill_null(0).cast(pl.Int64)
    )


# ---------------------------------------------------------------------------------------------
# Details text for each expectation
# ---------------------------------------------------------------------------------------------


def _missing_files_details(rows: pd.DataFrame) -> str:
    return _preview(_row_names(rows), "files missing")


def _corrupt_files_details(rows: pd.DataFrame) -> str:
    names = _row_names(rows)
    if "decode_error" in rows.columns:
        names = [f"{name}: {str(error)[:120]}" for name, error in zip(names, rows["decode_error"])]
    return _preview(names, "files do not decode")


def _make_label_range_details(class_count: int) -> Callable[[pd.DataFrame], str]:
    def details(rows: pd.DataFrame) -> str:
        names = [f"{name} label {label}" for name, label in zip(_row_names(rows), rows["label"])]
        return _preview(names, f"rows with labels outside [0, {class_count - 1}] ({class_count} classnames)")

    return details


def _make_consistency_details(
    canonical_classname: dict[int, str], canonical_label: dict[str, int]
) -> Callable[[pd.DataFrame], str]:
    def details(rows: pd.DataFrame) -> str:
        files_by_conflict: dict[str, list[str]] = {}
        for name, label, classname in zip(_row_names(rows), rows["label"], rows["classname"]):
            label, expected_name = int(label), canonical_classname[int(label)]
            if classname != expected_name:
                conflict = f"(label {label}, '{classname}') vs (label {label}, '{expected_name}')"
            else:
                conflict = f"(label {label}, '{classname}') vs (label {canonical_label[classname]}, '{classname}')"
            files_by_conflict.setdefault(conflict, []).append(name)
        items = [f"{conflict} in {', '.join(files[:3])}" + (" ..." if len(files) > 3 else "")
                 for conflict, files in files_by_conflict.items()]
        return _preview(items, f"conflicting label-classname pairs ({len(rows)} rows)")

    return details


def _coverage_details(rows: pd.DataFrame) -> str:
    items = [f"label {label} '{classname}' has no {split} images"
             for label, classname, split in zip(rows["label"], rows["classname"], rows["split"])]
    return _preview(items, "class/split pairs empty")


def _overlap_details(rows: pd.DataFrame) -> str:
    groups: dict[str, list[str]] = {}
    for name, content_hash in zip(_row_names(rows), rows["content_sha256"]):
        groups.setdefault(content_hash, []).append(name)
    items = [" = ".join(names) + f" (sha256 {content_hash[:12]})" for content_hash, names in groups.items()]
    return _preview(items, "images shared between train and test")


def _make_near_duplicate_details(pairs: pl.DataFrame, policy: NearDuplicatePolicy,
                                  exempted: int) -> Callable[[pd.DataFrame], str]:
    def details(rows: pd.DataFrame) -> str:
        items = [f"{path_a} ({split_a}) ~ {path_b} ({split_b}) distance {distance:.2f}"
                 for path_a, split_a, path_b, split_b, distance in pairs.iter_rows()]
        allowed = f"; {exempted} allow-listed pair(s) exempted" if exempted else ""
        return (_preview(items, f"near-duplicate pairs across splits (thumbnail distance <= {policy.max_distance}, "
                         f"{len(rows)} images)") + allowed)

    return details


# ---------------------------------------------------------------------------------------------
# GX wiring
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    name: str
    batch: str  # which frame it validates ("index", "coverage"; "rows", "classes", "pools" for settings)
    expectation: Any  # a gx.expectations.Expectation
    failure_details: Callable[[pd.DataFrame], str] | None  # offending rows -> text
    success_details: str


def required_splits(structure: DatasetStructure) -> tuple[str, ...]:
    """The splits every class must have images in: test alone for a test-only dataset, train and test where val
    is test (ImageNet), all three otherwise."""
    if structure.test_only:
        return ("test",)
    if structure.val_is_test:
        return ("train", "test")
    return SPLITS


def relaxations(structure: DatasetStructure) -> list[str]:
    """What the dataset's declared structure relaxes, in words (shown in the checks' results)."""
    notes = []
    if structure.test_only:
        notes.append("test-only dataset: classes need test images only")
    if structure.val_is_test:
        notes.append("its val set is its test set: classes need train and test images only")
    if structure.duplicate_classnames:
        notes.append(f"class names declared under two labels: {list(structure.duplicate_classnames)}")
    return notes


def _build_checks(index: pl.DataFrame, near_duplicate_policy: NearDuplicatePolicy,
                  structure: DatasetStructure = DatasetStructure()
                  ) -> tuple[list[_Check], pl.DataFrame, pl.DataFrame]:
    import great_expectations as gx

    canonical_classname = dict(zip(sorted(classname_votes(index)), expected_classnames(index)))
    canonical_label = _canonical_label_by_classname(index)
    # a declared duplicate name counts once per label it names
    labels_per_name = index.group_by("classname").agg(pl.col("label").n_unique().alias("labels"))
    class_count = index.get_column("classname").n_unique() + int(
        labels_per_name.filter(pl.col("classname").is_in(list(structure.duplicate_classnames)))
        .get_column("labels").sum()) - len(
        labels_per_name.filter(pl.col("classname").is_in(list(structure.duplicate_classnames))))
    near_duplicates, exempted = find_near_duplicates(index, near_duplicate_policy)
    index_with_helpers = _with_helper_columns(index, canonical_classname, canonical_label, near_duplicates,
                                              structure.duplicate_classnames)
    splits = required_splits(structure)
    coverage = _class_split_coverage(index, canonical_classname, splits)
    row_count = index.height
    relaxed = relaxations(structure)

    def noted(text: str, applies: bool) -> str:
        return text + (f" (relaxed: {'; '.join(relaxed)})" if applies and relaxed else "")

    not_inspected = int((~index.get_column("inspected")).sum()) if "inspected" in index.columns else 0
    inspection = (f"; {not_inspected} listed images not decoded or hashed: no experiment reads them"
                  if not_inspected else "")

    def tag(expectation: Any, name: str) -> Any:
        expectation.meta = {"outcome_name": name}
        return expectation

    checks = [
        _Check(
            "index_not_empty", "index",
            tag(gx.expectations.ExpectTableRowCountToBeBetween(min_value=1), "index_not_empty"),
            lambda rows: "index has no rows", f"{row_count} rows",
        ),
        _Check(
            "files_exist", "index",
            tag(gx.expectations.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]), "files_exist"),
            _missing_files_details, f"all {row_count} files exist",
        ),
        _Check(
            "images_decode", "index",
            tag(gx.expectations.ExpectColumnValuesToBeInSet(column="decodes_when_present", value_set=[True]),
                "images_decode"),
            _corrupt_files_details, "every existing file decodes as an image" + inspection,
        ),
        _Check(
            "labels_in_range", "index",
            tag(gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(class_count))),
                "labels_in_range"),
            _make_label_range_details(class_count), f"labels within [0, {class_count - 1}]",
        ),
        _Check(
            "labels_match_classnames", "index",
            tag(gx.expectations.ExpectColumnValuesToBeInSet(column="label_matches_classname", value_set=[True]),
                "labels_match_classnames"),
            _make_consistency_details(canonical_classname, canonical_label),
            noted("one classname per label and one label per classname", bool(structure.duplicate_classnames)),
        ),
        _Check(
            "classes_in_every_split", "coverage",
            tag(gx.expectations.ExpectColumnValuesToBeBetween(column="image_count", min_value=1),
                "classes_in_every_split"),
            _coverage_details, noted(f"all {len(canonical_classname)} classes present in {', '.join(splits)}",
                                     splits != SPLITS),
        ),
        _Check(
            "no_train_test_overlap", "index",
            tag(gx.expectations.ExpectColumnValuesToBeInSet(column="shared_between_train_and_test", value_set=[False]),
                "no_train_test_overlap"),
            _overlap_details, "no image content shared between train and test",
        ),
        _Check(
            "no_near_duplicates_across_splits", "index",
            tag(gx.expectations.ExpectColumnValuesToBeInSet(column="near_duplicate_across_splits", value_set=[False]),
                "no_near_duplicates_across_splits"),
            _make_near_duplicate_details(near_duplicates, near_duplicate_policy, exempted),
            f"no two images in different splits within thumbnail distance {near_duplicate_policy.max_distance}"
            + (f" ({exempted} allow-listed pair(s) exempted)" if exempted else ""),
        ),
    ]
    return checks, index_with_helpers, coverage


def _exception_message(result: Any) -> str | None:
    info = result.exception_info or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = [str(entry.get("exception_message")) for entry in entries
                if isinstance(entry, dict) and entry.get("raised_exception")]
    return "; ".join(messages) or None


def validate_dataset_index(index: pl.DataFrame, dataset_name: str,
                           near_duplicates: NearDuplicatePolicy | None = None,
                           structure: DatasetStructure | None = None) -> ValidationReport:
    """Run the dataset expectations with GX on ``index`` (from ``build_dataset_index``).

    Expectations: index_not_empty, files_exist, images_decode, labels_in_range,
    labels_match_classnames, classes_in_every_split, no_train_test_overlap,
    no_near_duplicates_across_splits (threshold and allow-list: ``near_duplicates``, the catalog's policy for the
    dataset; the default policy when None). ``structure`` (the layout reader's DatasetStructure) relaxes what the
    dataset legitimately has: a test-only dataset, a val set that is the test set, class names declared under two
    labels; a relaxed check says so in its result. Rows the index lists without inspecting them (``inspected``
    false: no experiment reads them) pass the decoding check with their count named.
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in index.columns]
    if missing:
        raise DatasetFormatError(f"dataset '{dataset_name}': index lacks columns {missing}")
    if not index.schema["label"].is_integer():
        raise DatasetFormatError(f"dataset '{dataset_name}': label column must be integer, got {index.schema['label']}")

    checks, index_with_helpers, coverage = _build_checks(index, near_duplicates or NearDuplicatePolicy(),
                                                         structure or DatasetStructure())
    frames = {
        "index": index_with_helpers.to_pandas().reset_index(drop=True),
        "coverage": coverage.to_pandas().reset_index(drop=True),
    }
    return _run_suite(f"{dataset_name}_dataset_index", checks, frames)


def _run_suite(suite_name: str, checks: list[_Check], frames: dict[str, pd.DataFrame]) -> ValidationReport:
    """Run each check's GX expectation on its frame (one suite per frame) and turn the results into outcomes."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    datasource = context.data_sources.add_pandas(f"{suite_name}_frames")
    results_by_name: dict[str, Any] = {}
    # GX logs at INFO/WARNING about the ephemeral context; keep the caller's log clean.
    gx_logger = logging.getLogger("great_expectations")
    previous_level = gx_logger.level
    gx_logger.setLevel(logging.ERROR)
    try:
        for batch_name, frame in frames.items():
            batch_checks = [check for check in checks if check.batch == batch_name]
            suite = context.suites.add(gx.ExpectationSuite(name=f"{suite_name}_{batch_name}"))
            for check in batch_checks:
                suite.add_expectation(check.expectation)
            batch_definition = datasource.add_dataframe_asset(batch_name).add_batch_definition_whole_dataframe(
                f"{batch_name}_whole"
            )
            validation = context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{suite_name}_{batch_name}", data=batch_definition, suite=suite)
            )
            run = validation.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
            for result in run.results:
                results_by_name[result.expectation_config.meta["outcome_name"]] = result
    finally:
        gx_logger.setLevel(previous_level)

    outcomes: list[ExpectationOutcome] = []
    for check in checks:
        result = results_by_name[check.name]
        error = _exception_message(result)
        success = bool(result.success) and error is None
        if success:
            details = check.success_details
        elif error is not None:
            details = f"expectation raised: {error}"
        elif check.failure_details is None:
            details = f"failed: {result.result}"
        else:
            offending_rows = frames[check.batch].loc[list(result.result.get("unexpected_index_list") or [])]
            details = check.failure_details(offending_rows)
        outcomes.append(ExpectationOutcome(check.name, success, details))
    return ValidationReport(suite_name, all(outcome.success for outcome in outcomes), outcomes)


def validate_setting_splits(splits: pl.DataFrame, index: pl.DataFrame, dataset_name: str) -> ValidationReport:
    """Run the learning-setting expectations with GX on `splits` (`setting_splits_table`) against the index."""
    import great_expectations as gx

    def tag(expectation: Any, name: str) -> Any:
        expectation.meta = {"outcome_name": name}
        return expectation

    eval_hashes = index.filter(pl.col("split") != "train")["content_sha256"].to_list()
    rows = (splits.join(index.select("relative_path", pl.col("split").alias("index_split"), "content_sha256"),
                        on="relative_path", how="left")
            .with_columns(index_split=pl.col("index_split").fill_null("absent"),
                          images_in_split=pl.len().over("setting", "seed", "relative_path"),
                          pooled_eval_content=(pl.col("role") == "unlabelled")
                          & pl.col("content_sha256").is_in(eval_hashes),
                          seen_class_in_trzsl_pool=(pl.col("setting") == "trzsl") & (pl.col("role") == "unlabelled")
                          & pl.col("seen_class")))
    labelled = splits.filter(((pl.col("setting") == "ssl") | (pl.col("setting") == "trzsl") & pl.col("seen_class")))
    classes = (labelled.group_by("setting", "seed", "label")
               .agg(labelled_train=(pl.col("role") == "labelled_train").sum())
               .sort("setting", "seed", "label"))
    pools = (splits.group_by("setting", "seed").agg(pool_size=(pl.col("role") == "unlabelled").sum())
             .sort("setting", "seed"))

    def listing(columns: list[str], noun: str) -> Callable[[pd.DataFrame], str]:
        return lambda bad: _preview([" ".join(f"{c}={row[c]}" for c in columns) for _, row in bad.iterrows()], noun)

    checks = [
        _Check("setting_rows_are_train_images", "rows",
               tag(gx.expectations.ExpectColumnValuesToBeInSet(column="index_split", value_set=["train"]),
                   "setting_rows_are_train_images"),
               listing(["setting", "seed", "relative_path", "index_split"], "rows outside the train split"),
               f"all {splits.height} rows are training images"),
        _Check("one_role_per_image", "rows",
               tag(gx.expectations.ExpectColumnValuesToBeInSet(column="images_in_split", value_set=[1]),
                   "one_role_per_image"),
               listing(["setting", "seed", "relative_path", "role"], "rows of an image listed twice in a split"),
               "every image has one role per split"),
        _Check("no_eval_image_in_pool", "rows",
               tag(gx.expectations.ExpectColumnValuesToBeInSet(column="pooled_eval_content", value_set=[False]),
                   "no_eval_image_in_pool"),
               listing(["setting", "seed", "relative_path"], "pooled images whose content is a val/test image"),
               "no val or test content in any pool"),
        _Check("labelled_class_coverage", "classes",
               tag(gx.expectations.ExpectColumnValuesToBeBetween(column="labelled_train", min_value=1),
                   "labelled_class_coverage"),
               listing(["setting", "seed", "label"], "classes without a labelled training image"),
               f"{classes.height} (setting, seed, class) combinations each have a labelled training image"),
        _Check("pools_not_empty", "pools",
               tag(gx.expectations.ExpectColumnValuesToBeBetween(column="pool_size", min_value=1), "pools_not_empty"),
               listing(["setting", "seed"], "splits with an empty pool"), f"{pools.height} splits, none empty"),
        _Check("trzsl_pool_unseen_only", "rows",
               tag(gx.expectations.ExpectColumnValuesToBeInSet(column="seen_class_in_trzsl_pool", value_set=[False]),
                   "trzsl_pool_unseen_only"),
               listing(["seed", "relative_path", "label"], "seen-class images in a TRZSL pool"),
               "TRZSL pools hold unseen classes only"),
    ]
    frames = {"rows": rows.to_pandas().reset_index(drop=True), "classes": classes.to_pandas().reset_index(drop=True),
              "pools": pools.to_pandas().reset_index(drop=True)}
    return _run_suite(f"{dataset_name}_learning_settings", checks, frames)
