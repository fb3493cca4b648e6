"""Shared storage around every asset: which workspace folders an asset reads and which it writes, and `synced`, the
decorator that pulls the first (and the second, which it updates) into the local working copy before the body and
pushes the second to the store after it succeeds (models.storage). A local workspace runs the body as it is: no
copy, no listing, the same paths.

The folders are named after what they hold, through the Workspace's own paths, so the layout is defined once:

    @synced(reads=(backbone, dataset_images, curation, features), writes=(experiment, features))
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from models.workspace import Workspace
from pipelines.resources import PromptLabResource


@dataclass(frozen=True)
class Scope:
    """What an asset's folders depend on: the workspace, the resource (its catalog) and the partition."""

    workspace: Workspace
    promptlab: PromptLabResource
    dataset: str | None = None
    experiment: str | None = None

    @classmethod
    def of(cls, context: dg.AssetExecutionContext, promptlab: PromptLabResource, workspace: Workspace) -> "Scope":
        if not context.has_partition_key:
            return cls(workspace, promptlab)
        key = context.partition_key
        if isinstance(key, dg.MultiPartitionKey):
            keys = key.keys_by_dimension  # a multi-source partition's dataset is its held-out domain
            return cls(workspace, promptlab, keys.get("dataset", keys.get("held_out")), keys["experiment"])
        return cls(workspace, promptlab, str(key))


Folders = Callable[[Scope], Iterable[Path]]


def corpus(scope: Scope):
    return [scope.workspace.corpus_dir]


def backbone(scope: Scope):
    return [scope.workspace.tiny_clip_dir]


def diffusion_model(scope: Scope):
    return [scope.workspace.diffusion_dir]


def dataset_images(scope: Scope):
    """An embedded dataset's generated images (a catalog dataset with a root of its own is read from that root)."""
    return [scope.workspace.embedded_dataset_dir(scope.dataset)]


def curation(scope: Scope):
    return [scope.workspace.curation_dir(scope.dataset)]


def experiment(scope: Scope):
    return [scope.workspace.experiment_dir(scope.dataset, scope.experiment)]


def features(scope: Scope):
    """The image and text feature caches (merged file by file, never mirrored)."""
    return [scope.workspace.feature_cache_dir]


def variations(scope: Scope):
    return [scope.workspace.variation_cache_dir]


def reports(scope: Scope):
    return [scope.workspace.report_path.parent]


def transfer_targets(scope: Scope):
    """The images and curation of every target of a transfer partition's source."""
    targets = scope.promptlab.catalog().transfer.targets_of(scope.dataset)
    names = sorted({name for group in targets.values() for name in group})
    return [folder for name in names for folder in (scope.workspace.embedded_dataset_dir(name),
                                                    scope.workspace.curation_dir(name))]


def test_time_inputs(scope: Scope):
    """A test-time run's starting checkpoint (on its source) and the images and curation of every dataset it
    scores."""
    plan = scope.promptlab.catalog().test_time
    run = plan.run(scope.experiment)
    folders = [scope.workspace.experiment_dir(scope.dataset, run.start)]
    for name in plan.targets[scope.dataset]:
        folders += [scope.workspace.embedded_dataset_dir(name), scope.workspace.curation_dir(name)]
    return folders


def synced(reads: Iterable[Folders] = (), writes: Iterable[Folders] = ()):
    """Pull `reads` and `writes` before the asset's (or asset check's) body, push `writes` after it returns (not
    when it raises: the store keeps the last complete version). A generator body (an asset check yielding its
    results) is pushed after its last result. Logged with what moved; nothing at all for a local workspace."""
    reads, writes = tuple(reads), tuple(writes)

    def decorate(compute):
        def around(context, promptlab: PromptLabResource):
            """Pull for a remote workspace and return the push to run after the body; None for a local one."""
            workspace = promptlab.workspace()
            if not workspace.is_remote:
                return None
            scope = Scope.of(context, promptlab, workspace)

            def folders(kinds: tuple[Folders, ...]) -> list[Path]:
                return list(dict.fromkeys(folder for kind in kinds for folder in kind(scope)))

            context.log.info(f"{workspace.location}: " + workspace.pull(folders(reads) + folders(writes))
                             .line("pulled"))
            return lambda: context.log.info(f"{workspace.location}: " + workspace.push(folders(writes))
                                            .line("pushed"))

        if inspect.isgeneratorfunction(compute):
            @functools.wraps(compute)
            def generator_body(context, promptlab: PromptLabResource):
                push = around(context, promptlab)
                yield from compute(context, promptlab)
                if push is not None:
                    push()

            generator_body.synced = (reads, writes)
            return generator_body

        @functools.wraps(compute)
        def body(context, promptlab: PromptLabResource):
            push = around(context, promptlab)
            result = compute(context, promptlab)
            if push is not None:
                push()
            return result

        body.synced = (reads, writes)  # what it moves, for tests and tools
        return body

    return decorate


def multitask_sources(scope: Scope):
    """The images and curation of every source of the catalog's multitask section (MVLPT's source runs)."""
    names = scope.promptlab.catalog().multitask.sources
    return [folder for name in names for folder in (scope.workspace.embedded_dataset_dir(name),
                                                    scope.workspace.curation_dir(name))]


def multitask_checkpoint(scope: Scope):
    """A multitask partition's own checkpoint folder (a source run's, or a seed average's)."""
    from models.experiments.multitask import multitask_checkpoint_dir

    return [multitask_checkpoint_dir(scope.workspace, scope.dataset).parent]


def multitask_runs(scope: Scope):
    """The source runs a seed average reads."""
    from models.experiments.multitask import multitask_checkpoint_dir

    runs = scope.promptlab.catalog().multitask.averages[scope.dataset]
    return [multitask_checkpoint_dir(scope.workspace, run).parent for run in runs]


def multitask_start(scope: Scope):
    """The seed-averaged source prompt an MVLPT target experiment starts from (none for other experiments)."""
    from models.experiments.multitask import multitask_checkpoint_dir

    average = scope.promptlab.catalog().multitask.average_of(scope.experiment)
    return [] if average is None else [multitask_checkpoint_dir(scope.workspace, average).parent]


def initialisation_checkpoint(scope: Scope):
    """An upstream initialisation partition's own checkpoint folder (GRAM, PVP)."""
    from models.experiments.initialisations import initialisation_dir

    return [initialisation_dir(scope.workspace, scope.dataset).parent]


def initialisation_start(scope: Scope):
    """The upstream initialisation an experiment starts from (none for experiments that name none)."""
    from models.experiments.initialisations import initialisation_dir

    entry = scope.promptlab.catalog().initialisations.of(scope.experiment)
    return [] if entry is None else [initialisation_dir(scope.workspace, entry.name).parent]
