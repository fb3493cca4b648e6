"""Which partitions make up each evaluation protocol, and the protocol jobs (no graph is run here)."""

import pytest

from models.catalog import DEFAULT_CATALOG_DIR, load_catalog
from pipelines.cli import main
from pipelines.definitions import defs
from pipelines.partitions import protocol_experiment_partitions, transfer_partition_keys


def test_default_grid_partitions_per_protocol():
    catalog = load_catalog(DEFAULT_CATALOG_DIR)
    datasets = list(catalog.datasets)
    few_shot = protocol_experiment_partitions(catalog, "few_shot")
    coop = {f"coop-k{k}-s{s}" for k in (1, 2, 4, 8, 16) for s in (1, 2, 3)}
    assert {(d, key) for d in datasets for key in coop | {"zeroshot"}} <= set(few_shot)
    assert not [key for _, key in few_shot if key.endswith("-b2n")]
    base_to_new = protocol_experiment_partitions(catalog, "base_to_new")
    untrained = {key for key, e in catalog.experiments.items() if e.method == "zero_shot"}
    assert {key for _, key in base_to_new} == untrained | {k for k in catalog.experiments if k.endswith("-b2n")}
    transfer = protocol_experiment_partitions(catalog, "transfer")
    sources = {(source, f"{method}-k16-s{s}") for source in ("ColourShapes", "Shapes") for s in (1, 2, 3)
               for method in ("coop", "cocoop", "kgcoop", "maple", "promptsrc", "gopro", "mocoop")}
    # the source checkpoints, and zero-shot on the sources and all their targets (the reference row)
    assert set(transfer) == sources | {(d, key) for d in datasets for key in untrained}
    assert set(transfer_partition_keys(catalog)) == sources
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol_experiment_partitions(catalog, "zero_shot")


def test_protocol_jobs_are_defined_and_transfer_partitions_come_from_the_catalog():
    for name in ("few_shot_job", "base_to_new_job", "transfer_job", "multi_source_job"):
        assert defs.resolve_job_def(name).name == name
    # the micro catalog has no domain family, so no multi-source partition (test_multi_source.py runs one)
    assert defs.resolve_job_def("multi_source_job").partitions_def.get_partition_keys() == []
    transfer = defs.resolve_job_def("transfer_job").partitions_def
    assert [str(key) for key in transfer.get_partition_keys()] == [
        "Shapes|coop-k2-s1", "Shapes|coop-k2-s2", "Shapes|promptsrc-k2-s1"]  # the micro catalog (conftest)


def test_cli_refuses_an_unknown_protocol(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--protocol", "cross_validation"])
    assert "invalid choice" in capsys.readouterr().err
