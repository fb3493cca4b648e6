"""The papers' claims (claims.yaml): refused when malformed, weighed against the seed spread on per-seed results, and
shown by the report on a warehouse that holds both sides."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import polars as pl
import pytest

from models.catalog import load_catalog
from models.catalog.claims import Claim, parse_claims
from models.catalog.suites import DEFAULT_CATALOG_DIR
from models.catalog.validation import CatalogError
from models.evaluation.claims import claim_checks
from models.evaluation.phenomena import CONTRADICTED, NOT_SHOWN, SHOWN
from models.report import markdown_results
from models.warehouse import MetricRow, Warehouse
from tests.evaluation.evaluation_synthetic import make_run

PATH = Path("claims.yaml")


def experiments():
    return load_catalog(DEFAULT_CATALOG_DIR).experiments


def claim(**fields):
    return {"claim": "R-AMT beats CoOp at 16 shots", "subject": "ramt-k16-s?-gdr03", "reference": "coop-k16-s?",
            "source": "R-AMT README", **fields}


def test_the_projects_claims_load_and_name_one_experiment_per_seed():
    import yaml

    claims = load_catalog(DEFAULT_CATALOG_DIR).claims
    written = yaml.safe_load((DEFAULT_CATALOG_DIR / "claims.yaml").read_text())["claims"]
    assert len(claims) == len(written), "every claim of the project's claims.yaml matches its grid (no typo)"
    by_name = {c.claim: c for c in claims}
    ramt = by_name["R-AMT beats CoOp at 16 shots"]
    assert ramt.subject == ("ramt-k16-s1-gdr03", "ramt-k16-s2-gdr03", "ramt-k16-s3-gdr03")
    assert ramt.reference == ("coop-k16-s1", "coop-k16-s2", "coop-k16-s3")
    assert by_name["MoCoOp beats CoCoOp in base-to-new harmonic mean"].metric == "harmonic_mean"


@pytest.mark.parametrize("fields, message", [
    ({"subject": "ramt-k16-s1*"}, "matches two experiments of seed 1"),
    ({"metric": "top5"}, "'metric' must be one of"),
    ({"direction": "sideways"}, "'direction' must be one of"),
    ({"threshold": -1}, "'threshold' must be points, 0 or more"),
    ({"source": ""}, "'source' must be a non-empty string"),
    ({"colour": "red"}, "claims[0]: unknown field(s) ['colour']"),
    ({"reference": "ramt-k16-s?-gdr03"}, "subject and reference share"),
])
def test_a_malformed_claim_is_refused_naming_file_entry_and_field(fields, message):
    with pytest.raises(CatalogError) as error:
        parse_claims(PATH, {"claims": [claim(**fields)]}, experiments())
    assert message in str(error.value) and "claims.yaml" in str(error.value)


def test_a_claim_of_experiments_the_grid_does_not_have_is_left_out():
    kept = parse_claims(PATH, {"claims": [claim(claim="gone", subject="notamethod-k3-s?"), claim()]}, experiments())
    assert [c.claim for c in kept] == ["R-AMT beats CoOp at 16 shots"]


def test_a_claim_made_twice_is_refused():
    with pytest.raises(CatalogError, match=r"claims\[1\].*'claim' must be a claim not made by an earlier entry"):
        parse_claims(PATH, {"claims": [claim(), claim()]}, experiments())


def rows(key, values, stage="evaluation", metric="top1_accuracy", backbone="tiny-clip"):
    """values: {(dataset, seed): value}"""
    return [{"backbone": backbone, "dataset": d, "experiment_key": key.format(seed=s) if s else key, "stage": stage,
             "seed": s, "metric": metric, "value": v} for (d, s), v in values.items()]


CLAIM = Claim("A beats B", ("a-s1", "a-s2", "a-s3"), ("b-s1", "b-s2", "b-s3"), "paper", subject_pattern="a-s?",
              reference_pattern="b-s?")


def frame(*parts):
    return pl.DataFrame([row for part in parts for row in part])


def test_a_claim_pairs_seeds_and_averages_over_the_datasets_both_ran():
    a = {("D1", 1): 0.60, ("D1", 2): 0.62, ("D1", 3): 0.64, ("D2", 1): 0.50, ("D2", 2): 0.50, ("D2", 3): 0.53,
         ("D3", 1): 0.99, ("D3", 2): 0.99, ("D3", 3): 0.99}  # D3: the reference never ran there
    b = {("D1", 1): 0.50, ("D1", 2): 0.51, ("D1", 3): 0.55, ("D2", 1): 0.40, ("D2", 2): 0.42, ("D2", 3): 0.41}
    ((backbone, _, check),) = claim_checks([CLAIM], frame(rows("a-s{seed}", a), rows("b-s{seed}", b)))
    margins = [statistics.fmean([a[("D1", s)] - b[("D1", s)], a[("D2", s)] - b[("D2", s)]]) for s in (1, 2, 3)]
    assert backbone == "tiny-clip" and check.n_seeds == 3
    assert check.value == pytest.approx(statistics.fmean([0.62, statistics.fmean([0.50, 0.50, 0.53])]))
    assert check.margin == pytest.approx(statistics.fmean(margins))
    assert check.seed_std == pytest.approx(statistics.stdev(margins))
    assert check.verdict == SHOWN and check.method == "a-s?" and check.reference == "b-s?"


def test_a_margin_inside_twice_the_seed_std_is_not_shown_and_one_below_it_contradicted():
    a = {("D1", 1): 0.50, ("D1", 2): 0.60, ("D1", 3): 0.40}
    b = {("D1", 1): 0.48, ("D1", 2): 0.50, ("D1", 3): 0.50}
    ((_, _, check),) = claim_checks([CLAIM], frame(rows("a-s{seed}", a), rows("b-s{seed}", b)))
    assert check.verdict == NOT_SHOWN
    worse = {key: value - 0.2 for key, value in b.items()}
    ((_, _, reversed_check),) = claim_checks([CLAIM], frame(rows("a-s{seed}", worse), rows("b-s{seed}", b)))
    assert reversed_check.verdict == CONTRADICTED


def test_zero_shot_is_the_reference_of_every_seed():
    claim_zs = dataclasses.replace(CLAIM, reference=("zeroshot",), reference_pattern="zeroshot")
    a = {("D1", 1): 0.60, ("D1", 2): 0.62, ("D1", 3): 0.61}
    ((_, _, check),) = claim_checks([claim_zs], frame(rows("a-s{seed}", a), rows("zeroshot", {("D1", None): 0.5})))
    assert check.n_seeds == 3 and check.reference_value == pytest.approx(0.5)
    assert check.seed_std == pytest.approx(statistics.stdev([0.10, 0.12, 0.11]))


def test_a_harmonic_mean_claim_takes_the_mean_of_base_and_new_averaged_over_datasets():
    claim_hm = dataclasses.replace(CLAIM, metric="harmonic_mean")
    base_a = {("D1", s): 0.8 for s in (1, 2)} | {("D2", s): 0.6 for s in (1, 2)}
    new_a = {("D1", s): 0.4 for s in (1, 2)} | {("D2", s): 0.6 for s in (1, 2)}
    base_b = {("D1", s): 0.9 for s in (1, 2)} | {("D2", s): 0.7 for s in (1, 2)}
    new_b = {("D1", s): 0.2 for s in (1, 2)} | {("D2", s): 0.4 for s in (1, 2)}
    results = frame(rows("a-s{seed}", base_a, metric="base_accuracy"), rows("a-s{seed}", new_a, metric="new_accuracy"),
                    rows("b-s{seed}", base_b, metric="base_accuracy"), rows("b-s{seed}", new_b, metric="new_accuracy"))
    ((_, _, check),) = claim_checks([claim_hm], results)

    def hm(base, new):
        return 2 * base * new / (base + new)

    assert check.value == pytest.approx(hm(0.7, 0.5)) and check.reference_value == pytest.approx(hm(0.8, 0.3))
    assert claim_checks([dataclasses.replace(CLAIM, stage="multi_source")], results) == []  # no rows of that stage


def test_the_report_checks_the_claims_the_warehouse_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_CATALOG", str(DEFAULT_CATALOG_DIR))  # the project's claims, whatever a fixture set
    warehouse = Warehouse(tmp_path / "w.duckdb", tmp_path / "predictions")
    warehouse.ensure_schema()
    for seed, (ramt, coop) in enumerate([(0.70, 0.60), (0.72, 0.61), (0.71, 0.60)], start=1):
        for key, method, value in ((f"ramt-k16-s{seed}-gdr03", "ramt", ramt), (f"coop-k16-s{seed}", "coop", coop)):
            run = dataclasses.replace(make_run(f"{key}", method=method, seed=seed, start_minute=seed),
                                      experiment_key=key, partition_key=f"caltech101|{key}")
            warehouse.record_run(run, [MetricRow("test", "top1_accuracy", value)], [], None)
    text = markdown_results(warehouse)
    line = next(row for row in text.splitlines() if row.startswith("| R-AMT beats CoOp at 16 shots"))
    assert "ramt-k16-s?-gdr03" in line and "coop-k16-s?" in line and "| shown |" in line, line
    assert "Tip-Adapter + R-AMT" not in text  # no rows of its experiments: left out


def test_the_report_reads_the_claims_file_alone_and_matches_its_patterns_to_the_warehouses_keys(tmp_path, monkeypatch):
    """A catalog folder with claims.yaml and nothing else (the report needs no experiments.yaml): the patterns are
    matched against the experiment keys the warehouse holds; a malformed claim is still refused by name."""
    import yaml

    from models.catalog.claims import report_claims

    (tmp_path / "claims.yaml").write_text(yaml.safe_dump({"claims": [claim(subject="a-s?", reference="b-s?")]}))
    monkeypatch.setenv("PROMPTLAB_CATALOG", str(tmp_path))
    monkeypatch.delenv("PROMPTLAB_SUITE", raising=False)
    (read,) = report_claims()
    assert read.subject_pattern == "a-s?" and read.reference_pattern == "b-s?"
    a = {("D1", 1): 0.6, ("D1", 2): 0.7}
    b = {("D1", 1): 0.5, ("D1", 2): 0.5}
    ((_, _, check),) = claim_checks([read], frame(rows("a-s{seed}", a), rows("b-s{seed}", b), rows("c-s{seed}", b)))
    assert check.value == pytest.approx(0.65) and check.reference_value == pytest.approx(0.5) and check.n_seeds == 2
    (tmp_path / "claims.yaml").write_text(yaml.safe_dump({"claims": [claim(subject="a-s?", metric="top5")]}))
    with pytest.raises(CatalogError, match=r"claims\[0\]: 'metric' must be one of"):
        report_claims()
