"""Which partitions `promptlab run` executes for a dataset / experiment / protocol selection, without Dagster: the
one place these decisions live (pipelines/partitions.py and the CLI's run use them; so does the plan)."""

from __future__ import annotations

from dataclasses import dataclass

from models.catalog import EVALUATION_PROTOCOLS, Catalog
from models.prompting.methods import get_method


@dataclass(frozen=True)
class RunSelection:
    datasets: tuple[str, ...]  # curated (and their features encoded)
    partitions: tuple[tuple[str, str], ...]  # (dataset, experiment): training + evaluation
    transfers: tuple[tuple[str, str], ...]  # (source, experiment): the checkpoint on every target
    test_time: tuple[tuple[str, str], ...]  # (source, test-time run)
    protocol: str | None = None
    multi_source: tuple[tuple[str, str], ...] = ()  # (held-out domain, experiment): trained on the split's sources
    # MVLPT's source runs (the catalog's multitask section) that the selected targets start from, or named
    multitask: tuple[str, ...] = ()


def untrained_experiments(catalog: Catalog) -> list[str]:
    return [key for key, experiment in catalog.experiments.items() if not get_method(experiment.method).trains_prompts]


def protocol_experiment_partitions(catalog: Catalog, protocol: str) -> list[tuple[str, str]]:
    """(dataset, experiment) partitions a protocol needs, in catalog order (pipelines/partitions.py's rule)."""
    if protocol not in EVALUATION_PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {EVALUATION_PROTOCOLS}")
    untrained = untrained_experiments(catalog)
    if protocol == "multi_source":  # the zero-shot references on each held-out domain (the view's reference rows)
        return [(d, e) for d in catalog.datasets for e in untrained if d in catalog.multi_source.held_out
                and catalog.experiments[e].setting is None and catalog.runs_on(d, e)]
    if protocol in ("test_time", "transfer"):
        if protocol == "test_time":
            plan = catalog.test_time
            involved = {name for targets in plan.targets.values() for name in targets}
            wanted = {(source, run.start) for source in plan.sources for run in plan.runs.values()}
            wanted |= {(source, key) for source in plan.sources for key in catalog.transfer.experiments}
        else:
            involved = {name for source in catalog.transfer.sources
                        for targets in catalog.transfer.targets_of(source).values() for name in (source, *targets)}
            wanted = {(source, key) for source in catalog.transfer.sources for key in catalog.transfer.experiments}
        wanted |= {(name, key) for name in involved for key in untrained}
        return [(d, e) for d in catalog.datasets for e in catalog.experiments
                if (d, e) in wanted and catalog.runs_on(d, e)]
    trained_protocol = "all_classes" if protocol == "few_shot" else protocol
    keys = [key for key, experiment in catalog.experiments.items()
            if key in untrained or experiment.protocol == trained_protocol]
    return [(dataset, key) for dataset in catalog.datasets for key in keys if catalog.runs_on(dataset, key)]


def transfer_partition_keys(catalog: Catalog) -> list[tuple[str, str]]:
    return [(source, key) for source in catalog.transfer.sources for key in catalog.transfer.experiments]


def test_time_partition_keys(catalog: Catalog) -> list[tuple[str, str]]:
    return [(source, key) for source in catalog.test_time.sources for key in catalog.test_time.runs]


def multi_source_partition_keys(catalog: Catalog) -> list[tuple[str, str]]:
    return catalog.multi_source.partition_keys()


def check_selection_names(catalog: Catalog, datasets: list[str] | None, experiments: list[str] | None) -> None:
    """CatalogError for a name that is neither a dataset, nor an experiment, nor a test-time run of the catalog
    (`--experiment` takes both: `tpt-zeroshot-s1` selects that test-time run)."""
    for name in datasets or []:
        catalog.dataset(name)
    for key in experiments or []:
        if key not in catalog.test_time.runs:
            catalog.experiment(key)


def run_selection(catalog: Catalog, datasets: list[str] | None = None, experiments: list[str] | None = None,
                  protocol: str | None = None) -> RunSelection:
    """What `promptlab run [--dataset ...] [--experiment ...] [--protocol P]` materializes; unknown names raise
    CatalogError as the run does.

    A slice runs what it names: `--experiment zeroshot` trains and evaluates zero-shot and the transfers of that
    checkpoint, but starts no test-time run (several minutes each) unless `--protocol test_time` asks for the
    test-time protocol or the test-time run's own key is named (`--experiment tpt-zeroshot-s1`, which also selects
    the partition it starts from)."""
    check_selection_names(catalog, datasets, experiments)
    named_runs = [key for key in experiments or [] if key in catalog.test_time.runs]
    named_experiments = [key for key in experiments or [] if key not in catalog.test_time.runs]
    whole_grid = not experiments
    datasets = list(datasets or catalog.datasets)
    experiments = (list(catalog.experiments) if whole_grid else
                   list(dict.fromkeys(named_experiments + [catalog.test_time.runs[key].start for key in named_runs])))
    partitions = (protocol_experiment_partitions(catalog, protocol) if protocol
                  else [(name, key) for name in datasets for key in experiments if catalog.runs_on(name, key)])
    partitions = [(name, key) for name, key in partitions if name in datasets and key in experiments]
    if named_runs and not named_experiments:  # only test-time runs named: their start partitions, on their sources
        partitions = [(name, key) for name, key in partitions
                      if any(catalog.test_time.runs[run].start == key and name in catalog.test_time.sources
                             for run in named_runs)]
    transfers = [(name, key) for name, key in transfer_partition_keys(catalog)
                 if name in datasets and key in named_experiments + (list(catalog.experiments) if whole_grid else [])
                 and protocol in (None, "transfer", "test_time")]
    test_time = [(name, key) for name, key in test_time_partition_keys(catalog)
                 if name in datasets and catalog.test_time.runs[key].start in experiments
                 and (protocol == "test_time" or (protocol is None and (whole_grid or key in named_runs)))]
    # a multi-source partition runs when its experiment is selected and its held-out domain and sources are
    multi_source = [(held_out, key) for held_out, key in multi_source_partition_keys(catalog)
                    if key in named_experiments + (list(catalog.experiments) if whole_grid else [])
                    and all(name in datasets for name in (held_out, *catalog.multi_source.split_of(held_out).sources))
                    and protocol in (None, "multi_source")]
    if protocol or named_runs:  # the run curates only what its partitions read
        needed = {name for name, _ in partitions + transfers}
        needed |= {target for source, _ in test_time for target in catalog.test_time.targets[source]}
        needed |= {name for held_out, _ in multi_source
                   for name in (held_out, *catalog.multi_source.split_of(held_out).sources)}
        datasets = [name for name in datasets if name in needed]
    multitask = multitask_runs(catalog, partitions, named_experiments)
    if multitask:  # the sources are curated whatever the datasets selected
        datasets += [name for name in catalog.multitask.sources if name not in datasets]
    return RunSelection(tuple(datasets), tuple(partitions), tuple(transfers), tuple(test_time), protocol,
                        multi_source=tuple(multi_source), multitask=tuple(multitask))


def multitask_runs(catalog: Catalog, partitions: list[tuple[str, str]], named: list[str]) -> list[str]:
    """The MVLPT source runs a selection needs: every seed of the averages its target partitions start from, and the
    source runs named (`--experiment mvlptcoop-k16-s1-source`), in the catalog's order."""
    plan = catalog.multitask
    averages = {plan.average_of(key) for _, key in partitions} - {None}
    return [run for average, runs in plan.averages.items() for run in runs if average in averages or run in named]
