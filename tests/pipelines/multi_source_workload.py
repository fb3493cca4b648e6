"""A multi-source run on a micro catalog of Shapes' three domains, in a process of its own: partitions are read from
the catalog when `pipelines` is imported, and the pipeline tests' micro catalog (conftest.py) has no shifted variant.
Run as `python multi_source_workload.py <result.json>` with $PROMPTLAB_CATALOG, $PROMPTLAB_WORKSPACE and $DAGSTER_HOME
set; writes what tests/pipelines/test_multi_source.py checks."""

import json
import sys
from pathlib import Path


def main(result_path: str) -> None:
    import dagster as dg
    import duckdb

    import models.experiments.multi_source as library
    import models.experiments.training_sets as training_sets
    from models.catalog import load_catalog
    from pipelines.cli import run_graph
    from pipelines.job_runner import run_job
    from pipelines.partitions import multi_source_partition_key, multi_source_partitions
    from pipelines.resources import PromptLabResource

    # every dataset whose images are encoded for training, and every image folder read, while a partition trains
    read_for_training, training = [], {"now": False}
    original_fewshot, original_inputs = training_sets.fewshot_training_set, training_sets.method_inputs_for_images

    def fewshot_spy(inputs, *args, **kwargs):
        read_for_training.append(inputs.dataset.name)
        return original_fewshot(inputs, *args, **kwargs)

    def inputs_spy(method, backbone, images, *args, **kwargs):
        if training["now"]:
            read_for_training.append(str(getattr(images, "image_dir", images)))
        return original_inputs(method, backbone, images, *args, **kwargs)

    original_train = library.train_multi_source

    def train_spy(*args, **kwargs):
        training["now"] = True
        try:
            return original_train(*args, **kwargs)
        finally:
            training["now"] = False

    training_sets.fewshot_training_set, training_sets.method_inputs_for_images = fewshot_spy, inputs_spy
    library.train_multi_source = train_spy

    summary = run_graph(None, None, log=lambda line: None, protocol="multi_source")
    read_by_the_run = list(read_for_training)
    workspace = PromptLabResource().workspace()
    catalog = load_catalog()

    def query(sql):
        with duckdb.connect(str(workspace.warehouse_path), read_only=True) as connection:
            return connection.execute(sql).fetchall()

    current = query("SELECT partition_key, run_id FROM runs WHERE stage = 'multi_source' AND is_current ORDER BY 1")
    # a failure after training (scoring the held-out domain) writes nothing: the partition's current run stays
    def failing_scores(*args, **kwargs):
        raise RuntimeError("scoring failed on purpose")

    library.held_out_scores = failing_scores
    instance = dg.DagsterInstance.get()
    failed = run_job(instance, "multi_source_job", multi_source_partition_key("ShapesSketch", "coop-k2-s1"),
                     log=lambda line: None)
    checkpoint = json.loads((workspace.multi_source_dir("ShapesSketch", "coop-k2-s1") / "prompt_checkpoint" /
                             "prompt_config.json").read_text())
    result = {
        "summary": summary,
        "partition_keys": sorted(str(key) for key in multi_source_partitions.get_partition_keys()),
        "catalog_keys": catalog.multi_source.partition_keys(),
        "runs": query("SELECT dataset, source_dataset, experiment_key, method, seed FROM runs "
                      "WHERE stage = 'multi_source' AND is_current ORDER BY experiment_key"),
        "view": query("SELECT dataset, source_dataset, method, shots, is_reference, n_seeds, mean BETWEEN 0 AND 1 "
                      "FROM multi_source_results ORDER BY is_reference DESC, method"),
        "current_before_failure": current,
        "failure_succeeded": failed.success,
        "current_after_failure": query("SELECT partition_key, run_id FROM runs WHERE stage = 'multi_source' AND "
                                       "is_current ORDER BY 1"),
        "runs_after_failure": query("SELECT count(*) FROM runs WHERE stage = 'multi_source'")[0][0],
        "read_for_training": read_by_the_run,
        "held_out_images": str(workspace.embedded_dataset_dir("ShapesSketch")),
        "composition": checkpoint["training_composition"],
        "checkpoint_multi_source": checkpoint["multi_source"],
        "report_has_table": "Multi-source domain generalization" in Path(summary["report"]).read_text(),
    }
    Path(result_path).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
