"""A transfer partition writes its targets' runs only once every target is scored: a failure on the second target
leaves no row of the first. The backbone and the learned prompt are stand-ins (this is about when rows are written,
not what they hold); the targets are curated for real, and lineage, metrics and warehouse writes are the asset's own."""

import os
import shutil

import dagster as dg
import duckdb
import numpy as np
import pytest
import yaml

from models.workspace import Workspace
from pipelines.assets.transfer import transfer_metrics
from pipelines.definitions import defs
from pipelines.resources import PromptLabResource


class _StandInBackbone:
    class spec:  # noqa: N801 - mirrors the loaded backbone's attribute
        name = "tiny-clip"

    weights_sha256, device, model, tokenizer = "0" * 64, "cpu", None, None


@pytest.fixture
def curated_workspace(tmp_path, monkeypatch):
    import models.experiments.scoring as experiments  # where the transfer's scoring looks these up

    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))
    instance = dg.DagsterInstance.ephemeral()
    for dataset in ("Shapes", "Digits"):
        assert defs.resolve_job_def("curation_job").execute_in_process(instance=instance, partition_key=dataset).success
    monkeypatch.setattr(PromptLabResource, "load_backbone", lambda self: _StandInBackbone())
    monkeypatch.setattr(experiments, "load_prompt_checkpoint", lambda directory, model, tokenizer, classnames, **_: (
        len(classnames), {"method": "coop", "templates": ["a photo of a {}."], "config_hash": "stand-in"}))
    monkeypatch.setattr(experiments, "method_inputs_for_images", lambda method, backbone, image_dir, paths, *_: paths)
    generator = np.random.default_rng(0)
    monkeypatch.setattr(experiments, "predict_log_probabilities", lambda classes, paths: np.log(
        generator.dirichlet(np.ones(classes), size=len(paths))))
    return Workspace(tmp_path / "workspace"), tmp_path


def _transfer_to(targets: list[str], tmp_path):
    """Materialize Shapes|coop-k2-s1 with the micro catalog's cross-dataset targets replaced by `targets`."""
    catalog = tmp_path / f"catalog-{'-'.join(targets)}"
    shutil.copytree(os.environ["PROMPTLAB_CATALOG"], catalog)  # the micro catalog (conftest.py)
    experiments = yaml.safe_load((catalog / "experiments.yaml").read_text())
    experiments["transfer"]["cross_dataset"]["targets"] = targets
    (catalog / "experiments.yaml").write_text(yaml.safe_dump(experiments))
    return dg.materialize([transfer_metrics], partition_key="Shapes|coop-k2-s1", raise_on_error=False,
                          resources={"promptlab": PromptLabResource(catalog_dir=str(catalog))})


def _transfer_runs(workspace):
    with duckdb.connect(str(workspace.warehouse_path), read_only=True) as connection:
        return connection.execute("SELECT dataset FROM runs WHERE stage = 'cross_dataset' ORDER BY 1").fetchall()


def test_a_failure_on_the_second_target_leaves_no_row_of_the_first(curated_workspace):
    workspace, tmp_path = curated_workspace
    failed = _transfer_to(["Digits", "Broken"], tmp_path)  # Broken is not curated: the second target fails
    assert not failed.success
    # Digits was scored, and nothing of it was written: no database, no pending batch
    assert not workspace.warehouse_path.parent.exists()
    # the same stand-ins with Digits alone write its run: the empty result above is the asset's doing
    assert _transfer_to(["Digits"], tmp_path).success
    assert _transfer_runs(workspace) == [("Digits",)]
