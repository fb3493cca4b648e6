"""Curation refuses a shot count the grid trains on but the val split cannot serve (K shots take min(K, 4) val
images per class), naming the dataset, K, the class and its val images, instead of leaving that K out and letting
the experiment fail later for want of a subset. Curates the micro world's Shapes with one val image per class in a
workspace of its own, in a folder named with every glob character (curation writes no database, so `?` too; no
backbone is loaded)."""

import os
import shutil

import dagster as dg
import yaml

from pipelines.definitions import defs


def test_curation_refuses_a_requested_k_whose_val_images_are_too_few(tmp_path, monkeypatch):
    folder = tmp_path / "we'ird [x]{a,b} *?"  # every glob character: each file is read by its literal path
    catalog = folder / "catalog"
    shutil.copytree(os.environ["PROMPTLAB_CATALOG"], catalog)
    world = yaml.safe_load((catalog / "world.yaml").read_text())
    world["benchmark"]["images_per_class"].update(train=3, val=1, test=1)
    (catalog / "world.yaml").write_text(yaml.safe_dump(world))
    grid = [{"method": "zero_shot"},
            {"method": "coop", "shots": [2], "seeds": [1], "optimization": {"epochs": 1}}]
    (catalog / "experiments.yaml").write_text(yaml.safe_dump({"grid": grid}))
    monkeypatch.setenv("PROMPTLAB_CATALOG", str(catalog))
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(folder / "workspace"))

    result = defs.resolve_job_def("curation_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key="Shapes", raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()  # the index and its checks (Parquet read under the `?`) pass
    assert failure.step_key == "fewshot_subsets"
    error = failure.step_failure_data.error
    message = error.message + "".join(cause.message for cause in [error.cause] if cause)
    assert "Shapes: 2-shot experiments (coop-k2-s1) need 2 train and 2 val images per class" in message
    assert "has 1 val image (" in message and "class 0 (" in message
