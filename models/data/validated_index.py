"""The dataset index that later stages may read: written to a staging file, promoted (atomic rename) only when every
blocking expectation passes, and recorded in a validation file beside it.

`index_validation.json` records the latest curation attempt (`status`: staged, passed or failed; the staged file's
SHA-256; the failed checks and their details) and the promoted index (its SHA-256, the checks it passed). A failed
re-curation leaves the promoted `index.parquet` byte for byte as it was, but `read_validated_index` refuses it:
the data on disk has changed since it was validated, so results from the old index would describe files that are
no longer there, and a weekly re-evaluation would silently keep writing "current" rows. Refusing, naming the failed
check and the file, keeps the failure visible until the dataset is fixed and curated again.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from models.provenance import sha256_file
from models.storage import read_parquet_file
from models.workspace import Workspace


class IndexNotValidatedError(RuntimeError):
    """The dataset has no index that passed its expectations, or its latest curation failed them."""


def _write_json_atomically(path: Path, payload: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)


def read_validation_record(workspace: Workspace, dataset: str) -> dict | None:
    path = workspace.index_validation_path(dataset)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise IndexNotValidatedError(f"{dataset}: {path} is not valid JSON ({error}); run curation_job "
                                     f"for {dataset} again") from error


def stage_index(workspace: Workspace, dataset: str, index: pl.DataFrame) -> Path:
    """Write a freshly built index to the staging file; the promoted index stays as it is until the checks pass."""
    staged = workspace.staged_index_path(dataset)
    staged.parent.mkdir(parents=True, exist_ok=True)
    temporary = staged.with_name(f".{staged.name}.tmp")
    index.write_parquet(temporary)
    os.replace(temporary, staged)
    previous = read_validation_record(workspace, dataset) or {}
    _write_json_atomically(workspace.index_validation_path(dataset), {
        "status": "staged",
        "staged_sha256": sha256_file(staged),
        "staged_at": datetime.now(timezone.utc).isoformat(),
        "promoted": previous.get("promoted"),  # the last index that passed, kept for provenance
    })
    return staged


def index_to_validate(workspace: Workspace, dataset: str) -> Path:
    """The staged index when there is one; otherwise the promoted one (its checks run again on their own)."""
    for path in (workspace.staged_index_path(dataset), workspace.index_path(dataset)):
        if path.exists():
            return path
    raise FileNotFoundError(f"{dataset}: no index at {workspace.staged_index_path(dataset)} or "
                            f"{workspace.index_path(dataset)}; materialize dataset_index first")


def record_validation(workspace: Workspace, dataset: str, passed_checks: list[str],
                      failed_checks: dict[str, str]) -> Path | None:
    """Record the checks' outcome on `index_to_validate`. A staged index that passed is promoted (returns the
    promoted path); one that failed is left where it is, the promoted index untouched (returns None). A promoted
    index checked again is refused from then on if it fails."""
    candidate = index_to_validate(workspace, dataset)
    record = read_validation_record(workspace, dataset) or {}
    candidate_sha256 = sha256_file(candidate)
    staged = candidate == workspace.staged_index_path(dataset)
    if staged and record.get("staged_sha256") != candidate_sha256:
        raise IndexNotValidatedError(f"{dataset}: {candidate} changed after it was staged (SHA-256 "
                                     f"{candidate_sha256}, {workspace.index_validation_path(dataset)} says "
                                     f"{record.get('staged_sha256')}); run curation_job for {dataset} again")
    now = datetime.now(timezone.utc).isoformat()
    if failed_checks:
        _write_json_atomically(workspace.index_validation_path(dataset), {
            **record, "status": "failed", "candidate": str(candidate), "candidate_sha256": candidate_sha256,
            "validated_at": now, "failed_checks": failed_checks, "passed_checks": sorted(passed_checks)})
        return None
    promoted = workspace.index_path(dataset)
    if staged:
        os.replace(candidate, promoted)
    _write_json_atomically(workspace.index_validation_path(dataset), {
        "status": "passed", "validated_at": now, "staged_sha256": record.get("staged_sha256"),
        "promoted": {"index_sha256": candidate_sha256, "passed_checks": sorted(passed_checks), "validated_at": now}})
    return promoted


def read_validated_index(workspace: Workspace, dataset: str, listed_rows: bool = False) -> pl.DataFrame:
    """The promoted index of `dataset`, refused (IndexNotValidatedError naming the check and the file) unless its
    latest curation passed every blocking expectation and the file is the one that passed. Rows the index only
    listed (at ImageNet scale: training images no experiment reads) are left out unless `listed_rows` (the few-shot
    sampler, which draws from the whole list in the reference's order)."""
    path, record_path = workspace.index_path(dataset), workspace.index_validation_path(dataset)
    record = read_validation_record(workspace, dataset)
    if record is None:
        state = f"{path} has no validation record" if path.exists() else "it has no index"
        raise IndexNotValidatedError(f"{dataset} is not curated: {state} ({record_path} is missing); run "
                                     f"curation_job for {dataset}")
    status = record.get("status")
    if status == "failed":
        checks = "; ".join(f"{name}: {details}" for name, details in sorted(record["failed_checks"].items()))
        raise IndexNotValidatedError(
            f"{dataset}: the latest curation failed its blocking check(s) {sorted(record['failed_checks'])} "
            f"({record_path}; rejected index {record.get('candidate')}): {checks}. Fix the data and run "
            f"curation_job for {dataset} again; nothing is read from {path} meanwhile")
    if status != "passed":
        raise IndexNotValidatedError(f"{dataset}: the latest index ({workspace.staged_index_path(dataset)}) has not "
                                     f"been validated yet ({record_path} says {status!r}); run curation_job for "
                                     f"{dataset} with its checks")
    expected = record["promoted"]["index_sha256"]
    if not path.exists() or sha256_file(path) != expected:
        found = sha256_file(path) if path.exists() else "missing"
        raise IndexNotValidatedError(f"{dataset}: {path} is not the index that passed validation (SHA-256 {found}, "
                                     f"{record_path} says {expected}); run curation_job for {dataset} again")
    index = read_parquet_file(path)
    if "inspected" in index.columns and not listed_rows:
        index = index.filter(pl.col("inspected")).drop("inspected")
    return index
