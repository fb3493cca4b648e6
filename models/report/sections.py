"""The report's sections, each a function from the warehouse to a Section of paragraphs, tables and charts
(blocks.py), or None when the warehouse holds nothing for it. Configurations are named in words
(models/evaluation/configurations.py) and grouped by protocol, so that a table compares like with like."""

from __future__ import annotations

import logging

import polars as pl

from models.evaluation.configurations import (PROTOCOL_ORDER, configuration_labels, describe_configuration,
                                              protocol_of, with_shots)
from models.report import figures, queries
from models.report.blocks import Heading, Paragraph, Section, Table, Tiles, table
from models.report.formatting import format_mean_std, is_fraction_metric, percent, percent_pm, signed_points
from models.warehouse import Warehouse

logger = logging.getLogger(__name__)


class ConfigurationNames:
    """(backbone, method, options) -> the configuration in words, unique across the whole report."""

    def __init__(self, warehouse: Warehouse):
        frame = warehouse.query(queries.CONFIGURATIONS_SQL)
        labels = configuration_labels(frame).iter_rows(named=True) if frame.height else ()
        self._words = {(r["backbone"], r["method"], r["options"]): r["configuration"] for r in labels}

    def __call__(self, row: dict) -> str:
        return (self._words.get((row["backbone"], row["method"], row["options"]))
                or describe_configuration(row["method"], row["options"]))

    def with_shots(self, row: dict) -> str:
        return with_shots(self(row), row["shots"])


def by_protocol(frame: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """The rows of each protocol (few-shot, SSL, UL, TRZSL, base-to-new, others), in that order."""
    protocols = frame.with_columns(pl.col("options").map_elements(protocol_of, return_dtype=pl.String)
                                   .alias("protocol"))
    present = protocols["protocol"].unique(maintain_order=True).to_list()
    ordered = [p for p in PROTOCOL_ORDER if p in present] + sorted(p for p in present if p not in PROTOCOL_ORDER)
    return [(p, protocols.filter(pl.col("protocol") == p)) for p in ordered]


def _protocol_title(protocol: str) -> str:
    return {"few-shot": "Few-shot (all classes)", "base-to-new": "Base-to-new"}.get(protocol, f"{protocol} setting")


# ---------------------------------------------------------------------------------------------- published results
PUBLISHED_NOTE = ("Published: the number a paper reports for the same method (plain, without variants), backbone, "
                  "shots and datasets (assets_catalog/published_results.yaml; each row's source is in the warehouse's "
                  "table published_results); Δ = measured − published, in points.")


def sync_published_results(warehouse: Warehouse) -> None:
    """Load the catalog's published results into the warehouse when they changed (CatalogError when the file is
    malformed); a warehouse held by another process keeps the ones it has (logged)."""
    if not warehouse.sync_published_results():
        logger.warning("published results of %s not refreshed from the catalog now (the warehouse is held by "
                       "another process); the report shows those it holds", warehouse.name)


def published_by_row(warehouse: Warehouse, params: dict, measured_sql: str, protocol: str, measured: dict[str, str],
                     keys: tuple[str, ...] = ()) -> dict[tuple, dict[str, tuple[float, float]]]:
    """(*keys, backbone, method, options, shots) of a row of `measured_sql` -> {metric: (published, measured −
    published)}, for the rows with a published number (queries.published_comparison_sql); empty when the warehouse
    has no published results."""
    if warehouse.query(queries.PUBLISHED_TABLES_SQL)["n"][0] < 2:  # a snapshot from before the tables existed
        return {}
    frame = warehouse.query(queries.published_comparison_sql(measured_sql, protocol, measured, keys), params)
    found: dict[tuple, dict[str, tuple[float, float]]] = {}
    for r in frame.iter_rows(named=True):
        key = tuple(r[column] for column in (*keys, "backbone", "method", "options", "shots"))
        found.setdefault(key, {})[r["metric"]] = (r["published"], r["difference"])
    return found


def with_published(headers: list[str], rows: list[list], compared: dict[int, tuple[object, str]],
                   published: list[dict]) -> tuple[list[str], list[list]]:
    """The table with, right after each column `index` of `compared` (index -> (what the row's published numbers
    are keyed by, a label)), its published number and the difference measured − published, where any row has one;
    `published[i]` holds row i's published numbers (published_by_row). A column no row has is left out."""
    shown = {index for index, (key, _) in compared.items() if any(key in found for found in published)}
    new_headers: list[str] = []
    new_rows: list[list] = [[] for _ in rows]
    for index, header in enumerate(headers):
        new_headers.append(header)
        for new_row, row in zip(new_rows, rows):
            new_row.append(row[index])
        if index in shown:
            key, label = compared[index]
            new_headers += [f"{label} published (%)", f"{label} Δ (points)"]
            for new_row, found in zip(new_rows, published):
                value = found.get(key)
                new_row += ["", ""] if value is None else [percent(value[0]), signed_points(value[1])]
    return new_headers, new_rows


# ----------------------------------------------------------------------------------------------------- headline
def headline(warehouse: Warehouse, params: dict, names: ConfigurationNames) -> tuple[Section, dict]:
    """Zero-shot against the best few-shot configuration of each dataset, and each configuration's mean over
    datasets, protocol by protocol. Returns the section and the summary's numbers."""
    per_dataset = warehouse.query(queries.HEADLINE_SQL, params)
    averages = warehouse.query(queries.CONFIGURATION_AVERAGES_SQL, params)
    numbers = {"mean_zero_shot_top1": None, "mean_best_trained_top1": None,
               "mean_top1_by_method": {with_shots(names(r), r["shots"]): r["mean_top1"]
                                       for r in averages.iter_rows(named=True)}}
    if per_dataset.height == 0 and averages.height == 0:
        return Section("Headline", [Paragraph("No test results of evaluation runs yet.", "muted")]), numbers
    blocks = []
    if per_dataset.height:
        average = warehouse.query(queries.HEADLINE_AVERAGE_SQL, params).row(0, named=True)
        rows = [(r["dataset"], percent(r["zero_shot_top1"]),
                 "–" if r["method"] is None else with_shots(names(r), r["best_shots"]),
                 format_mean_std(r["best_top1"], r["best_std"], r["best_n_seeds"]), signed_points(r["gain"]))
                for r in per_dataset.iter_rows(named=True)]
        rows.append((f"Average ({average['n_zero_shot_datasets']} / {average['n_best_datasets']} datasets)",
                     percent(average["mean_zero_shot_top1"]), "best per dataset", percent(average["mean_best_top1"]),
                     signed_points(average["mean_gain"])))
        blocks += [Paragraph(f"Few-shot protocol (all classes, K labelled images per class): zero-shot is method "
                             f"'{params['zero_shot']}'; the best trained configuration is chosen per dataset by mean "
                             "test top-1 over seeds. Learning settings and base-to-new are compared in their own "
                             "tables below."),
                   table(["Dataset", "Zero-shot top-1 (%)", "Best few-shot configuration", "Best top-1 (%)",
                          "Gain (points)"], rows, numeric=(1, 3, 4))]
        numbers["mean_zero_shot_top1"] = average["mean_zero_shot_top1"]
        numbers["mean_best_trained_top1"] = average["mean_best_top1"]
    else:
        blocks.append(Paragraph("No few-shot results (all classes) yet.", "muted"))
    blocks.append(Heading("Average over datasets, per configuration"))
    for protocol, rows in by_protocol(averages):
        blocks.append(table(["Configuration", "Shots", "Mean test top-1 over datasets (%)", "Datasets"],
                            [(names(r), r["shots"], percent(r["mean_top1"]), r["n_datasets"])
                             for r in rows.iter_rows(named=True)],
                            numeric=(1, 2, 3), title=_protocol_title(protocol)))
    return Section("Headline", blocks), numbers


def results_per_dataset(warehouse: Warehouse, params: dict, names: ConfigurationNames) -> Section | None:
    results = warehouse.query(queries.CROSS_DATASET_SQL, params)
    if results.height == 0:
        return None
    blocks = [Paragraph("Mean ± sample std over seeds, in percent; lower ECE is better calibrated. One table per "
                        "protocol.", "muted")]
    for protocol, rows in by_protocol(results):
        blocks.append(table(
            ["Dataset", "Configuration", "Shots", "Top-1 (%)", "Macro-F1 (%)", "ECE (%)"],
            [(r["dataset"], names(r), r["shots"], format_mean_std(r["top1_mean"], r["top1_std"], r["top1_seeds"]),
              format_mean_std(r["macro_f1_mean"], r["macro_f1_std"], r["macro_f1_seeds"]),
              format_mean_std(r["ece_mean"], r["ece_std"], r["ece_seeds"]))
             for r in rows.iter_rows(named=True)],
            numeric=(2, 3, 4, 5), title=_protocol_title(protocol)))
    return Section("Results per dataset (test split)", blocks)


# ----------------------------------------------------------------------------------------------------- few-shot
def few_shot(warehouse: Warehouse, params: dict, names: ConfigurationNames) -> Section | None:
    """CoOp's few-shot figure (top-1 against K, zero-shot as a flat line, one small panel per dataset and their
    average) and its table."""
    results = warehouse.query(queries.FEW_SHOT_SQL, params)
    if results.height == 0:
        return None
    results = results.with_columns(pl.struct("backbone", "method", "options").map_elements(
        names, return_dtype=pl.String).alias("configuration"))
    per_dataset = results.filter(pl.col("panel") == 1)
    trained_shot_counts = (per_dataset.filter(~pl.col("is_zero_shot")).group_by("dataset", "configuration")
                           .agg(pl.col("shots").n_unique().alias("n")))
    if trained_shot_counts.filter(pl.col("n") > 1).height == 0:
        return None  # no shot axis to draw
    shots = sorted(set(results["shots"].to_list()))
    published = published_by_row(warehouse, params, queries.FEW_SHOT_SQL, "few_shot", {"top1_accuracy": "mean"},
                                 keys=("panel", "dataset"))
    cells: dict[tuple[str, str], dict[int, str]] = {}
    published_cells: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    for r in results.iter_rows(named=True):
        row = (r["dataset"], r["configuration"])
        cells.setdefault(row, {})[r["shots"]] = (
            percent(r["mean"]) if r["std"] is None else format_mean_std(r["mean"], r["std"], r["n_seeds"]))
        found = published.get((r["panel"], r["dataset"], r["backbone"], r["method"], r["options"], r["shots"]))
        if found:
            published_cells.setdefault(row, {})[r["shots"]] = found["top1_accuracy"]
    rows = [[dataset, configuration, *[by_shots.get(k, "") for k in shots]]
            for (dataset, configuration), by_shots in cells.items()]
    headers, rows = with_published(
        ["Dataset", "Configuration", *[_shots_header(k) for k in shots]], rows,
        {2 + index: (k, _shots_header(k)) for index, k in enumerate(shots)},
        [published_cells.get(row, {}) for row in cells])
    return Section("Few-shot learning", [
        Paragraph("Test top-1 (%) against labelled images per class (K), mean ± std over seeds; zero-shot is the "
                  "flat dashed line (0 shots). The average panel averages the points measured on every dataset."
                  + (" " + PUBLISHED_NOTE if published_cells else ""), "muted"),
        figures.shot_curves(results.select("dataset", "configuration", "is_zero_shot", "shots", "mean", "std")),
        table(headers, rows, numeric=range(2, len(headers))),
    ])


def _shots_header(shots: int) -> str:
    return f"{shots} shot{'s' if shots != 1 else ''}"


def few_shot_averages(warehouse: Warehouse, params: dict, names: ConfigurationNames) -> Section | None:
    """CLIP-LoRA's Table 1: configurations x shots, test top-1 averaged over the datasets, mean ± std over seeds of
    the per-seed averages, zero-shot first; shown when the configurations ran at 2 or more shot counts."""
    results = warehouse.query(queries.FEW_SHOT_AVERAGES_SQL, params)
    if results.filter(~pl.col("is_zero_shot"))["shots"].n_unique() < 2:
        return None
    shots = sorted(set(results["shots"].to_list()))
    published = published_by_row(warehouse, params, queries.FEW_SHOT_AVERAGES_SQL, "few_shot",
                                  {"top1_accuracy": "mean"})
    cells: dict[str, dict[int, str]] = {}
    policies: dict[str, str] = {}
    published_cells: dict[str, dict[int, tuple[float, float]]] = {}
    for r in results.iter_rows(named=True):
        configuration = names(r)
        policies[configuration] = "" if r["is_zero_shot"] else selection_policy(r["method"], r["options"])
        cells.setdefault(configuration, {})[r["shots"]] = format_mean_std(r["mean"], r["std"], r["n_seeds"])
        found = published.get((r["backbone"], r["method"], r["options"], r["shots"]))
        if found:
            published_cells.setdefault(configuration, {})[r["shots"]] = found["top1_accuracy"]
    headers, rows = with_published(
        ["Configuration", *[_shots_header(k) for k in shots], "Selection"],
        [[configuration, *[by_shots.get(k, "") for k in shots], policies[configuration]]
         for configuration, by_shots in cells.items()],
        {1 + index: (k, _shots_header(k)) for index, k in enumerate(shots)},
        [published_cells.get(configuration, {}) for configuration in cells])
    datasets = results["datasets"][0].to_list()
    return Section("Few-shot top-1 averaged over datasets", [
        Paragraph(f"As CLIP-LoRA's Table 1 lays it out: test top-1 (%) of each configuration at each number of "
                  f"labelled images per class, averaged over the {len(datasets)} dataset"
                  f"{'s' if len(datasets) != 1 else ''} ({', '.join(datasets)}) per seed, then mean ± sample std "
                  "over seeds of those averages; a seed counts only where it ran on every one of them. Zero-shot "
                  "learns nothing: its row stands at 0 shots. Selection: what chose each configuration's epoch or "
                  "hyperparameters (last: nothing, the last epoch; few_shot_val: the K-shot val subset; full_val: "
                  "the whole val split; never test)."
                  + (" " + PUBLISHED_NOTE if published_cells else ""), "muted"),
        table(headers, rows, numeric=range(1, len(headers) - 1)),  # the last column: the selection policy
    ])


def selection_policy(method: str, options: str | None) -> str:
    """The model-selection policy of a configuration: its grid entry's (recorded in options) or its method's
    published one (models.prompting.methods registry); '?' for a method this code does not register."""
    import json

    from models.prompting.methods import METHODS

    chosen = json.loads(options).get("selection") if options else None
    if chosen:
        return chosen
    return METHODS[method].selection if method in METHODS else "?"


def _verdict_rule(thresholds: str) -> str:
    from models.evaluation.phenomena import SPREADS_TO_SHOW

    return (f"'shown': the margin clears the claim's threshold ({thresholds}) by more than {SPREADS_TO_SHOW:g} seed "
            f"stds; 'contradicted': it falls short of it by more than {SPREADS_TO_SHOW:g} seed stds; 'not shown': "
            "in between, or fewer than 2 seeds.")


def _pattern_table(checks) -> Table:
    rows = [(check.claim, check.method, percent(check.value), check.reference, percent(check.reference_value),
             signed_points(check.margin), f"{100.0 * check.seed_std:.2f}", check.n_seeds, check.verdict,
             check.reason) for check in checks]
    return table(["Claim", "Method", "Value (%)", "Against", "Its value (%)", "Margin (points)", "Seed std (points)",
                  "Seeds", "Verdict", "Why"], rows, numeric=(2, 4, 5, 6, 7))


def few_shot_pattern(warehouse: Warehouse) -> Section | None:
    from models.evaluation.phenomena import COOP_FEW_SHOT_GAIN, few_shot_pattern_checks

    results = warehouse.query(queries.FEW_SHOT_PATTERN_SQL)
    checks = few_shot_pattern_checks(results) if results.height else []
    if not checks:
        return None
    return Section("Does the published few-shot pattern appear?", [
        Paragraph("CoOp (Figure 3: 11 datasets) reports that 16-shot CoOp beats zero-shot CLIP (by about 15 points "
                  f"with ViT-B/16; checked here as beating it, and by at least {100 * COOP_FEW_SHOT_GAIN:g} "
                  "points), that the linear probe falls below zero-shot at 1 shot and overtakes it by 16 shots, and "
                  "that CoOp stays above the linear probe. Each claim compares the two configurations (plain, "
                  "without variants) on the datasets where both ran, averaged over those datasets; seed std: the "
                  "std over seeds of that dataset-averaged margin (zero-shot adds no spread; against CoOp the seeds "
                  f"are paired). {_verdict_rule(f'0, or {100 * COOP_FEW_SHOT_GAIN:g} points')}", "muted"),
        _pattern_table(checks),
    ])


# ----------------------------------------------------------------------------------------------- limited labels
def limited_labels(warehouse: Warehouse) -> Section | None:
    """Menghini et al.'s main table: rows are method x pseudolabel strategy, columns SSL / UL / TRZSL (HM) per dataset
    and averaged; zero-shot is the reference row. Then whether GRIP >= IFPL >= FPL and iterative > zero-shot in UL
    hold on the datasets both rows ran, beyond twice the seed std."""
    from models.evaluation.phenomena import limited_label_pattern_checks

    results = warehouse.query(queries.LIMITED_LABEL_SQL)
    if results.filter(pl.col("method") != "zero_shot").height == 0:  # zero-shot alone is a reference to nothing
        return None
    settings = ("ssl", "ul", "trzsl")
    datasets = sorted({d for d in results["dataset"].to_list() if d is not None}) + [None]
    cells: dict[tuple[str, str], dict[tuple, str]] = {}
    for r in results.iter_rows(named=True):
        cells.setdefault((r["method"], r["strategy"]), {})[(r["dataset"], r["setting"])] = format_mean_std(
            r["mean"], r["std"], r["n_seeds"])
    columns = [(d, s) for d in datasets for s in settings]
    rows = [(method, strategy, *[by.get(c, "") for c in columns]) for (method, strategy), by in cells.items()]
    try:
        checks = [(c.claim, percent(c.value), percent(c.reference_value), f"{100 * c.margin:+.1f}",
                   f"{100 * c.spread:.1f}", c.n_seeds, c.verdict, c.reason, ", ".join(c.datasets))
                  for c in limited_label_pattern_checks(warehouse.query(queries.LIMITED_LABEL_SEED_SQL))]
    except ValueError as error:  # several option variants of one configuration: no check picks one silently
        checks, why_unchecked = [], f"The pattern is not checked: {error}."
    else:
        why_unchecked = "No strategy pair ran in the same setting yet."
    return Section("Limited-label settings and pseudolabels", [
        Paragraph("Menghini et al.'s table: SSL and UL score test top-1 on all classes, TRZSL the harmonic mean of "
                  "seen and unseen top-1 (both among all classes); mean ± std over seeds; the last columns average "
                  "the datasets (per seed, then over seeds). Strategy 'none': the setting's labels alone.", "muted"),
        table(["Method", "Strategy", *[f"{d or 'average'} {s.upper()}" for d, s in columns]], rows,
              numeric=range(2, 2 + len(columns))),
        Paragraph("Checks (Menghini et al.: GRIP ≥ IFPL ≥ FPL on average, iterative strategies above zero-shot in UL): "
                  "each compares two rows on the datasets both ran, per seed averaged over those datasets, then "
                  "over seeds; 'shown' when the margin exceeds twice the larger seed std, 'contradicted' when it "
                  "falls below minus that, 'not shown' in between or with fewer than two seeds (no spread).",
                  "muted"),
        table(["Claim", "Value (%)", "Against (%)", "Margin (points)", "2 × seed std", "Seeds", "Verdict", "Why",
               "Datasets"], checks) if checks else Paragraph(why_unchecked, "muted"),
        *_pseudolabel_rounds(warehouse),
    ])


def _pseudolabel_rounds(warehouse: Warehouse) -> list:
    """The per-round pseudolabel accuracy: a plot and its table (view pseudolabel_rounds, all its metrics)."""
    rounds = warehouse.query(queries.PSEUDOLABEL_ROUNDS_SQL)
    if rounds.height == 0:
        return []
    rows = [(r["setting"].upper(), r["method"], r["strategy"].upper(), r["round"],
             format_mean_std(r["mean"], r["std"], r["n_seeds"]), r["n_datasets"]) for r in rounds.iter_rows(named=True)]
    return [
        Paragraph("Pseudolabel accuracy per round against the hidden training labels (round 0: the zero-shot "
                  "selection), averaged over datasets per seed, then mean ± std over seeds. Coverage and "
                  "calibration per round: the view pseudolabel_rounds.", "muted"),
        figures.pseudolabel_round_curves(rounds),
        table(["Setting", "Method", "Strategy", "Round", "Pseudolabel accuracy (%)", "Datasets"], rows,
              numeric=(3, 4, 5)),
    ]


# -------------------------------------------------------------------------------------------------- base-to-new
_BASE_TO_NEW_METRICS = {"base_accuracy": "base_accuracy", "new_accuracy": "new_accuracy",
                        "harmonic_mean": "harmonic_mean"}


def base_to_new(warehouse: Warehouse, params: dict, names: ConfigurationNames) -> tuple[Section | None, dict]:
    results = warehouse.query(queries.BASE_TO_NEW_SQL, params)
    if results.height == 0:
        return None, {}
    averages = warehouse.query(queries.BASE_TO_NEW_AVERAGES_SQL, params)
    averages = averages.with_columns(pl.struct("backbone", "method", "options", "shots").map_elements(
        names.with_shots, return_dtype=pl.String).alias("configuration"))
    n_datasets = results["dataset"].n_unique()
    published_averages = published_by_row(warehouse, params, queries.BASE_TO_NEW_AVERAGES_SQL, "base_to_new",
                                           _BASE_TO_NEW_METRICS)
    published = published_by_row(warehouse, params, queries.BASE_TO_NEW_SQL, "base_to_new", _BASE_TO_NEW_METRICS,
                                  keys=("dataset",))

    def published_tile(headers: list[str], rows: list[list], found: list[dict], title: str) -> Table:
        headers, rows = with_published(headers, rows, {1: ("base_accuracy", "Base"), 2: ("new_accuracy", "New"),
                                                       3: ("harmonic_mean", "HM")}, found)
        return table(headers, rows, numeric=range(1, len(headers)), title=title)

    def key(row: dict) -> tuple:
        return row["backbone"], row["method"], row["options"], row["shots"]

    tiles = [published_tile(
        ["Configuration", "Base (%)", "New (%)", "HM (%)", "Datasets"],
        [[r["configuration"], percent(r["base_accuracy"]), percent(r["new_accuracy"]), percent(r["harmonic_mean"]),
          r["n_datasets"]] for r in averages.iter_rows(named=True)],
        [published_averages.get(key(r), {}) for r in averages.iter_rows(named=True)],
        f"Average over {n_datasets} dataset{'s' if n_datasets != 1 else ''}")]
    for dataset in results["dataset"].unique(maintain_order=True).to_list():
        of_dataset = list(results.filter(pl.col("dataset") == dataset).iter_rows(named=True))
        tiles.append(published_tile(
            ["Configuration", "Base (%)", "New (%)", "HM (%)", "Seeds"],
            [[names.with_shots(r), percent_pm(r["base_accuracy"], r["base_std"]),
              percent_pm(r["new_accuracy"], r["new_std"]), percent(r["harmonic_mean"]), r["n_seeds"]]
             for r in of_dataset],
            [published.get((dataset, *key(r)), {}) for r in of_dataset], dataset))
    harmonic_by_method = dict(zip(averages["configuration"], averages["harmonic_mean"]))
    return Section("Base-to-new generalization", [
        Paragraph("Top-1 (%) on base and new classes of configurations trained on the base half (protocol "
                  "base_to_new) and of zero-shot; mean ± std over seeds. HM = 2·B·N / (B + N) of the seed means, "
                  "computed in SQL; the average table takes the HM of the dataset-averaged base and new accuracies, "
                  "as the papers do." + (" " + PUBLISHED_NOTE if published or published_averages else ""), "muted"),
        figures.base_to_new_bars(averages),
        Tiles(tiles),
    ]), harmonic_by_method


def base_to_new_pattern(warehouse: Warehouse) -> Section | None:
    from models.evaluation.phenomena import COOP_NEW_CLASS_DROP, published_pattern_checks

    averages = warehouse.query(queries.PATTERN_AVERAGES_SQL)
    checks = (published_pattern_checks(averages, warehouse.query(queries.PATTERN_SEED_AVERAGES_SQL))
              if averages.height else [])
    if not checks:
        return None
    return Section("Does the published base-to-new pattern appear?", [
        Paragraph("The papers report (ViT-B/16, 11 datasets) that tuning beats zero-shot on base classes, that "
                  f"CoOp falls below zero-shot on new classes, by at least {100 * COOP_NEW_CLASS_DROP:g} points, "
                  "and that CoCoOp, KgCoOp, MaPLe and PromptSRC recover harmonic mean over CoOp. Each claim is "
                  "checked here on the base-to-new averages above (base and new: accuracy; HM: harmonic mean). "
                  "Margin: how many points the numbers go the published way (negative: the other way). Seed std: "
                  "the sample std over seeds of that margin, each seed's base and new averaged over the datasets "
                  "first; zero-shot is deterministic and adds no spread, against CoOp the seeds both ran are "
                  f"paired. {_verdict_rule(f'0, or {100 * COOP_NEW_CLASS_DROP:g} points')}", "muted"),
        _pattern_table(checks),
    ])


def claims(warehouse: Warehouse, catalog_claims=None) -> Section | None:
    """The catalog's claims (claims.yaml) that the warehouse holds both sides of, each with its margin against twice
    the seed std; `catalog_claims` defaults to the claims file of $PROMPTLAB_CATALOG (models/catalog/claims.py)."""
    from models.evaluation.claims import claim_checks

    if catalog_claims is None:
        from models.catalog.claims import report_claims

        catalog_claims = report_claims()
    if not catalog_claims:
        return None
    checks = claim_checks(catalog_claims, warehouse.query(queries.CLAIM_RESULTS_SQL))
    if not checks:
        return None
    several = len({backbone for backbone, _, _ in checks}) > 1
    rows = [((f"{backbone} / " if several else "") + check.claim, check.method, percent(check.value),
             check.reference, percent(check.reference_value), signed_points(check.margin),
             f"{100.0 * check.seed_std:.2f}", check.n_seeds, check.verdict, check.reason, claim.source)
            for backbone, claim, check in checks]
    return Section("Do the papers' claims hold here?", [
        Paragraph("The comparisons the methods' papers make (assets_catalog/claims.yaml), on the experiments of each "
                  "side (keys, one per seed), averaged over the datasets where both ran; top-1 on the test split, "
                  "or on base and new classes and their harmonic mean. Seed std: the sample std over seeds of the "
                  "dataset-averaged margin, the seeds paired (zero-shot adds no spread). "
                  f"{_verdict_rule('0 unless the claim says')}", "muted"),
        table(["Claim", "Experiments", "Value (%)", "Against", "Its value (%)", "Margin (points)",
               "Seed std (points)", "Seeds", "Verdict", "Why", "Claimed by"], rows, numeric=(2, 4, 5, 6, 7)),
    ])


# ----------------------------------------------------------------------------------------------------- transfer
TRANSFERS = (("cross_dataset", queries.CROSS_DATASET_TRANSFER_SQL, "Cross-dataset transfer", "other dataset"),
             ("domain_generalization", queries.DOMAIN_GENERALIZATION_SQL, "Domain generalization",
              "domain-shifted variant of the source"))


def transfer_tables(warehouse: Warehouse, params: dict, names: ConfigurationNames, sql: str
                    ) -> list[tuple[Table, list[list[float | None]]]]:
    """Per source: rows are configurations, columns the source, each target, the average over targets (mean ± std
    over seeds) and the seeds; with the means of those cells (fractions, None where missing) for the heat map."""
    results = warehouse.query(sql, params)
    tables = []
    for source in results["source_dataset"].unique(maintain_order=True).to_list():
        of_source = results.filter(pl.col("source_dataset") == source)
        targets = sorted(of_source.filter(pl.col("role") == "target")["dataset"].unique().to_list())
        columns = [source, *targets, "average"]
        rows, means = [], []
        for _, group in of_source.group_by("backbone", "method", "options", "shots", maintain_order=True):
            by_column = {("average" if r["role"] == "average" else r["dataset"]): r
                         for r in group.iter_rows(named=True)}
            cells = [by_column.get(column) for column in columns]
            rows.append((names.with_shots(group.row(0, named=True)),
                         *["–" if cell is None else percent_pm(cell["mean"], cell["std"]) for cell in cells],
                         group["n_seeds"].max()))
            means.append([None if cell is None else cell["mean"] for cell in cells])
        header = ["Configuration", f"Source: {source}", *targets, "Average", "Seeds"]
        tables.append((table(header, rows, numeric=range(1, len(header)), title=f"Source: {source}"), means))
    return tables


def transfer(warehouse: Warehouse, params: dict, names: ConfigurationNames, sql: str, title: str,
             targets_name: str) -> Section | None:
    tables = transfer_tables(warehouse, params, names, sql)
    if not tables:
        return None
    blocks = [Paragraph(
        f"Test top-1 (%) of prompts learned on all classes of the source (its own test split in the first column), "
        f"applied to the class names of each {targets_name}; mean ± std over seeds. Average: over the targets, per "
        "seed, then over seeds. Zero-shot learned nothing from the source: its row is its own evaluation on each "
        "dataset. The heat map shows the means.", "muted")]
    for frame, means in tables:
        heat_map = figures.transfer_heat_map([row[0] for row in frame.rows], list(frame.headers[1:-1]), means,
                                             f"{title} from {frame.title.removeprefix('Source: ')}")
        blocks += [heat_map, frame]
    return Section(title, blocks)


# --------------------------------------------------------------------------------------------------- test time
def test_time(warehouse: Warehouse) -> Section | None:
    """TPT's table (rows: zero-shot, ensemble, trained checkpoints, TPT, TPT + checkpoint, DiffTPT; columns: the
    source, its shifted variants, their averages), the published pattern checks, and per-run diagnostics."""
    from models.evaluation.test_time_table import row_label, tpt_pattern_checks

    seed_results = warehouse.query(queries.TEST_TIME_SEED_SQL)
    if seed_results.height == 0:
        return None
    blocks: list = [Paragraph(
        "Test top-1 (%) of prompts tuned per test image on that image's views (TPT: the 10 % lowest-entropy of 64 "
        "augmented views, one AdamW step; DiffTPT: conventional and diffusion-generated views, cosine then entropy "
        "filter, 4 steps; settings in each run's lineage), and the untuned rows they start from or compare with: "
        "zero-shot, the prompt ensemble, the trained checkpoint (on the shifted variants: transferred, as in domain "
        "generalization). Mean ± std over seeds (the views' seed; a checkpoint's own seed). Average: over all "
        "columns, Shifts: over the shifted variants, per seed then over seeds.", "muted")]
    blocks += test_time_tables(seed_results)
    checks = tpt_pattern_checks(seed_results)
    if checks:
        blocks += [Paragraph("Published pattern (TPT: above zero-shot in domain and on the shifts, TPT + CoOp above "
                             "CoOp on the shifts; DiffTPT: above TPT on average). " + _verdict_rule("0"), "muted"),
                   _pattern_table(checks)]
    details = warehouse.query(queries.TEST_TIME_DETAILS_SQL)
    if details.height:
        def number(value, digits: str) -> str:
            return "–" if value is None else format(value, digits)

        rows = [(row_label(r["mode"], r["method"], r["experiment_key"]), r["dataset"], r["seed"], percent(r["top1"]),
                 percent(r["before_tuning"]), number(r["views_kept"], ".1f"), number(r["entropy_before"], ".3f"),
                 number(r["entropy_after"], ".3f"), number(r["images_per_second"], ".1f"))
                for r in details.iter_rows(named=True)]
        blocks += [Paragraph("Per run: top-1 after tuning and of the starting prompt on the original view (before "
                             "tuning), views kept per image, the average entropy of the kept views before and after "
                             "tuning, and test images per second.", "muted"),
                   table(["Run", "Dataset", "Seed", "Top-1 (%)", "Before tuning (%)", "Views kept", "Entropy before",
                          "Entropy after", "Images/s"], rows, numeric=range(2, 9), measured=(8,))]
    return Section("Test-time tuning (TPT, DiffTPT)", blocks)


def test_time_tables(seed_results: pl.DataFrame) -> list[Table]:
    """Per source: the rows of models/evaluation/test_time_table.py against the source, its shifts and averages."""
    from models.evaluation.test_time_table import tpt_tables

    tables = []
    for tpt in tpt_tables(seed_results):
        columns = [*tpt.datasets, "average", "shifts"]
        rows = [(label, *[percent_pm(cells[c].mean, cells[c].std) if c in cells else "–" for c in columns],
                 max(cell.n_seeds for cell in cells.values()))
                for label, cells in tpt.rows.items()]
        header = ["Row", f"{tpt.source} (source)", *tpt.datasets[1:], "Average", "Shifts", "Seeds"]
        tables.append(table(header, rows, numeric=range(1, len(header)), title=f"Source: {tpt.source}"))
    return tables


# -------------------------------------------------------------------------------------------- the other stages
def other_splits(warehouse: Warehouse, params: dict, names: ConfigurationNames) -> Section | None:
    results = warehouse.query(queries.OTHER_EVALUATION_SPLITS_SQL, params)
    if results.height == 0:
        return None
    rows = [(r["dataset"], r["split"], names(r), r["shots"], format_mean_std(r["mean"], r["std"], r["n_seeds"]))
            for r in results.iter_rows(named=True)]
    return Section("Other evaluation splits (top-1)", [
        table(["Dataset", "Split", "Configuration", "Shots", "Top-1 (%)"], rows, numeric=(3, 4))])


def _stage_table(results: pl.DataFrame, title: str = "") -> Table:
    rows = [(r["dataset"], describe_configuration(r["method"], r["options"]), r["shots"], r["split"], r["metric"],
             format_mean_std(r["mean"], r["std"], r["n_seeds"], percent=is_fraction_metric(r["metric"])))
            for r in results.iter_rows(named=True)]
    return table(["Dataset", "Configuration", "Shots", "Split", "Metric", "Mean ± std"], rows, numeric=(2, 5),
                  title=title)


def pseudolabel_quality(warehouse: Warehouse) -> Section | None:
    results = warehouse.query(queries.STAGE_RESULTS_SQL, {"stage": "pseudolabels"})
    if results.height == 0:
        return None
    return Section("Pseudolabel quality", [
        Paragraph("Accuracy-like metrics in percent, counts as numbers; mean ± std over seeds.", "muted"),
        _stage_table(results)])


def other_stages(warehouse: Warehouse) -> Section | None:
    tables = []
    for stage in warehouse.query(queries.OTHER_STAGES_SQL)["stage"].to_list():
        results = warehouse.query(queries.STAGE_RESULTS_SQL, {"stage": stage})
        if results.height:
            tables.append(_stage_table(results, title=stage))
    return Section("Other stages", tables) if tables else None


# --------------------------------------------------------------------------------------------------- provenance
def provenance(warehouse: Warehouse) -> Section:
    by_stage = warehouse.query(queries.RUNS_BY_STAGE_SQL)
    facts = warehouse.query(queries.PROVENANCE_SQL)
    code_versions = warehouse.query(queries.CURRENT_CODE_VERSIONS_SQL)["n_code_versions"][0]
    blocks: list = []
    if code_versions > 1:
        blocks.append(Paragraph(f"Current results come from {code_versions} different code versions.", "warning"))
    blocks.append(table(
        ["Stage", "Runs", "Current runs", "Datasets", "First started (UTC)", "Last finished (UTC)"],
        [(r["stage"], r["runs"], r["current_runs"], r["datasets"], r["first_started_at"], r["last_finished_at"])
         for r in by_stage.iter_rows(named=True)], numeric=(1, 2, 3)))
    blocks.append(table(["Field", "Value", "Runs", "Current runs"],
                        [(r["field"], r["value"], r["runs"], r["current_runs"]) for r in facts.iter_rows(named=True)],
                        numeric=(2, 3)))
    return Section("Provenance", blocks)


# --------------------------------------------------------------------------------------------------- throughput
_BENCHMARK_TITLES = {
    "training": ("Training", "training images/s of every method (`make bench`)"),
    "zero-shot-evaluation": ("Zero-shot evaluation", "test images/s, PromptLab with cold and warm caches against "
                             "CLIP_benchmark on the same model object (`python -m bench.clip_benchmark_compare`)"),
    "test-time": ("Test-time tuning", "test images/s of the batched loop against the authors' reference-style loop "
                  "(`make bench-testtime`)"),
}


def _benchmark_run(results: pl.DataFrame) -> list:
    """One benchmark run: what, where and how busy, its rows with their speed-ups and targets, missed targets."""
    run = results.row(0, named=True)
    title, measures = _BENCHMARK_TITLES.get(run["benchmark"], (run["benchmark"], "images/s"))
    load = "unknown" if run["load_average"] is None else f"{run['load_average']:.2f}"
    blocks: list = [Paragraph(
        f"{title}: {measures}. Run {run['bench_run_id']}, finished {run['finished_at']} UTC on {run['device']} "
        f"(1-minute load {load} at its start), torch {run['torch_version']}, commit {run['git_commit'] or 'unknown'}; "
        f"backbone {run['backbone']} ({run['weights_source']}; weights {run['backbone_weights_sha256'][:12]}); "
        f"{run['dataset']}. Speed-up: images/s over the same method's baseline variant.", "muted")]
    rows = []
    for r in results.iter_rows(named=True):
        speedup = "–" if r["speedup"] is None else f"{r['speedup']:.2f}x over {r['baseline_variant']}"
        target = ("" if r["target_speedup"] is None
                  else f"{r['target_speedup']:g}x: {'met' if r['meets_target'] else 'missed'}")
        rows.append((r["method"], r["variant"], r["batch_size"], f"{r['images_per_second']:.1f}", speedup, target,
                     f"{r['peak_rss_mb']:.0f}", f"{r['rss_delta_mb']:.1f}",
                     "–" if r["peak_cuda_mb"] is None else f"{r['peak_cuda_mb']:.0f}"))
    blocks.append(table(["Method", "Variant", "Batch size", "Images/s", "Speed-up", "Target", "Peak RSS (MB)",
                         "Δ RSS (MB)", "Peak CUDA (MB)"], rows, numeric=(2, 3, 6, 7, 8),
                        measured=(3, 4, 5, 6, 7, 8)))
    missed = [f"{r['method']} {r['variant']} reached {r['speedup']:.2f}x of its {r['target_speedup']:g}x target"
              for r in results.iter_rows(named=True) if r["meets_target"] is False]
    if missed:
        blocks.append(Paragraph("Targets missed: " + "; ".join(missed) + ".", "warning"))
    if run["benchmark"] == "training":
        blocks.append(figures.throughput_bars(results))
    return blocks


def throughput(warehouse: Warehouse) -> Section:
    """The latest run of each benchmark (bench/) on each backbone, device and dataset: images/s, speed-ups against
    targets, peak memory, the machine's load."""
    has_view = warehouse.query(queries.BENCHMARK_VIEW_EXISTS_SQL)["n"][0] > 0
    results = warehouse.query(queries.THROUGHPUT_SQL) if has_view else pl.DataFrame()
    if results.height == 0:
        return Section("Throughput", [Paragraph(
            "No throughput benchmark recorded yet. Run `make bench` (or `.venv/bin/python -m bench.throughput`) "
            "to measure training images/s of every method with and without the feature cache, batched CoCoOp "
            "against a per-image loop, and peak memory; then rebuild this report.", "muted")])
    blocks = []
    for run_id in dict.fromkeys(results["bench_run_id"].to_list()):
        blocks += _benchmark_run(results.filter(pl.col("bench_run_id") == run_id))
    return Section("Throughput", blocks)

