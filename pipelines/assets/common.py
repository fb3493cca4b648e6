"""Small helpers the experiment-stage assets share: a partition's curated inputs, its lineage record, and the
refusals that come before any work."""


import json

from pipelines.assets.curation import image_root
from pipelines.resources import PromptLabResource


def refuse_training_on_test_only(catalog, dataset: str, experiment: str) -> None:
    """A trained experiment's partition on a test-only dataset (ImageNet's shifts) is refused, saying why."""
    if not catalog.runs_on(dataset, experiment):
        entry = catalog.dataset(dataset)
        raise ValueError(f"{dataset} is a test-only dataset ({entry.source}): nothing trains on it, so {experiment} "
                         f"has no partition there; it is evaluated as a transfer or test-time target of "
                         f"{entry.domain_shift_of or 'its source'}")


def partition_inputs(promptlab: PromptLabResource, dataset: str, experiment: str):
    """The curated inputs of a partition (models.experiments.ExperimentInputs); refused (naming the failed check)
    when the dataset's latest curation did not pass its checks."""
    from models.data.validated_index import read_validated_index
    from models.experiments import ExperimentInputs

    catalog, workspace = promptlab.catalog(), promptlab.workspace()
    entry = catalog.dataset(dataset)
    index = read_validated_index(workspace, dataset)
    classnames = json.loads(workspace.class_split_path(dataset).read_text())["classnames"]
    return ExperimentInputs(entry, catalog.experiment(experiment), index, classnames, image_root(entry, workspace))


def lineage_record(context, promptlab: PromptLabResource, stage: str, inputs, backbone,
                   templates, data_hash: str, started_at, config_extra: dict | None = None):
    """The warehouse run record: what this result depends on (code, config, data, backbone, commit, Dagster run)."""
    import uuid
    from datetime import datetime, timezone

    import torch

    from models.precision import compute_description
    from models.provenance import git_commit, library_code_version, stable_hash
    from models.warehouse import RunRecord

    experiment = inputs.experiment
    return RunRecord(
        run_id=uuid.uuid4().hex,
        stage=stage,
        dataset=inputs.dataset.name,
        experiment_key=experiment.key,
        partition_key=str(context.partition_key),
        method=experiment.method,
        shots=experiment.shots or 0,  # zero-shot: 0 labelled images per class
        seed=experiment.seed or 0,  # deterministic methods have no seed
        options=experiment.variant_options(),
        dagster_run_id=context.run.run_id,
        code_version=library_code_version(),
        config_hash=stable_hash({"experiment": experiment.as_dict(), "templates": list(templates),
                                 "backbone": backbone.spec.name, **(config_extra or {})}),
        git_commit=git_commit(),
        backbone=backbone.spec.name,
        backbone_weights_sha256=backbone.weights_sha256,
        data_hash=data_hash,
        templates=list(templates),
        started_at=started_at,
        finished_at=datetime.now(timezone.utc),
        compute=compute_description(backbone.device, torch.get_num_threads()),
    )


def refuse_inapplicable_method(inputs, backbone) -> None:
    """Fail now, naming why, if the experiment's method cannot run on this backbone: called by the stages that do
    work before training (augmentation, pseudolabels), so none of it is spent on an experiment that cannot train."""
    from models.experiments import check_method_applies

    experiment = inputs.experiment
    check_method_applies(backbone, experiment.method, experiment.parameters, inputs.classnames,
                         experiment.templates_for(inputs.dataset), inputs.dataset.template_groups)
