"""The embedded offline world: the procedural corpus and the two tiny models trained on it (shipped in the catalog,
or pretrained here with `--retrain-world`)."""


import json
from pathlib import Path

import dagster as dg

from models.provenance import source_version, stable_hash
from pipelines.assets import sync as folders
from pipelines.assets.sync import synced
from pipelines.metadata import path_value, training_curves
from pipelines.resources import PromptLabResource

CORPUS_CODE = source_version("models/embedded/corpus.py")
TINY_CLIP_CODE = source_version(
    "models/embedded/corpus.py", "models/backbones/tiny_clip.py", "assets_catalog/model_configs/tiny-clip.json"
)
DIFFUSION_CODE = source_version("models/embedded/corpus.py", "models/backbones/tiny_diffusion.py")


def _fingerprint_path(directory: Path) -> Path:
    return directory.parent / f"{directory.name}.fingerprint"


def is_current(directory: Path, fingerprint: str) -> bool:
    """An output is reused only when it was produced by the same code version and config."""
    path = _fingerprint_path(directory)
    return directory.exists() and path.exists() and path.read_text().strip() == fingerprint


def mark_current(directory: Path, fingerprint: str) -> None:
    _fingerprint_path(directory).write_text(fingerprint)


def _progress_logger(context: dg.AssetExecutionContext, model: str):
    """Logs `<model> epoch i/N: loss, elapsed, time left` after every epoch and every 30 s within one."""
    def log(report) -> None:
        context.log.info(report.line(model))

    return log


@dg.asset(group_name="embedded_world", code_version=CORPUS_CODE, kinds={"python", "numpy"})
@synced(writes=(folders.corpus,))
def pretraining_corpus(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Procedural image-caption pairs (shapes, colours, textures, sizes, backgrounds, styles, digits)."""
    from models.embedded.corpus import write_corpus

    settings = promptlab.catalog().world["corpus"]
    directory = promptlab.workspace().corpus_dir
    fingerprint = stable_hash({"code": CORPUS_CODE, "settings": settings})
    reused = is_current(directory, fingerprint)
    if not reused:
        write_corpus(directory, **settings)
        mark_current(directory, fingerprint)
    context.log.info(f"corpus at {directory} ({'reused' if reused else 'generated'})")
    return dg.MaterializeResult(
        metadata={"path": path_value(directory), "num_pairs": settings["num_pairs"], "reused": reused,
                  "fingerprint": fingerprint}
    )


def pretrain_on_corpus(context: dg.AssetExecutionContext, promptlab: PromptLabResource, model: str,
                       settings_key: str, code_version: str, directory: Path, train) -> dg.MaterializeResult:
    """Pretrain a model on the corpus, or reuse the saved one when code version, settings and corpus are unchanged.

    train(images, captions, directory, settings, on_progress) saves the model and returns its training result.
    """
    workspace, settings = promptlab.workspace(), promptlab.catalog().world[settings_key]
    fingerprint = stable_hash({"code": code_version, "settings": settings,
                               "corpus": _fingerprint_path(workspace.corpus_dir).read_text()})
    if is_current(directory, fingerprint):
        summary = json.loads((directory / "training_summary.json").read_text())
        context.log.info(f"{model} is current (fingerprint {fingerprint}); not retrained")
        return dg.MaterializeResult(metadata={"path": path_value(directory), "reused": True, "fingerprint": fingerprint,
                                              "weights_sha256": summary.get("weights_sha256", ""),
                                              **training_curves(f"{model} pretraining loss",
                                                                {"loss": summary.get("epoch_losses") or []})})
    from models.embedded.corpus import load_corpus

    images, captions = load_corpus(workspace.corpus_dir)
    context.log.info(f"{model}: pretraining {settings['epochs']} epochs on {len(captions)} pairs")
    result = train(images, captions, directory, settings, _progress_logger(context, model))
    mark_current(directory, fingerprint)
    return dg.MaterializeResult(
        metadata={
            "path": path_value(directory),
            "reused": False,
            "fingerprint": fingerprint,
            "weights_sha256": result.weights_sha256,
            "seconds": round(result.seconds, 1),
            "final_loss": result.epoch_losses[-1],
            **training_curves(f"{model} pretraining loss", {"loss": result.epoch_losses}),
        }
    )


def shipped_or_pretrained(context: dg.AssetExecutionContext, promptlab: PromptLabResource, model: str,
                          weights_key: str, settings_key: str, code_version: str, directory: Path, install,
                          train) -> dg.MaterializeResult:
    """The weights shipped in the catalog (world.yaml `<weights_key>`), installed after their hash is checked; with
    `retrain_world` (launchpad) or `promptlab run --retrain-world`, or with none shipped, the `<settings_key>` recipe
    pretrained here and the result compared with the shipped hash.

    install(source, weights_sha256, directory, settings) checks and copies a shipped folder; train as in
    pretrain_on_corpus.
    """
    shipped = promptlab.catalog().world.get(weights_key)
    if shipped and not promptlab.retrain_world_requested():
        return install_shipped(context, promptlab, model, settings_key, shipped, code_version, directory, install)
    result = pretrain_on_corpus(context, promptlab, model, settings_key, code_version, directory, train)
    if shipped:
        found = result.metadata["weights_sha256"]
        same = found == shipped["weights_sha256"]
        message = (f"{model} retrained: the same weights as the shipped ones, bit for bit" if same else
                   f"{model} retrained: weights {found} differ from the shipped {shipped['weights_sha256']} "
                   "(other hardware, thread count or library versions change the floating-point sums)")
        (context.log.info if same else context.log.warning)(message)
        result = dg.MaterializeResult(metadata={**result.metadata, "source": "retrained",
                                                "same_as_shipped": same})
    return result


def install_shipped(context: dg.AssetExecutionContext, promptlab: PromptLabResource, model: str, settings_key: str,
                    shipped: dict, code_version: str, directory: Path, install) -> dg.MaterializeResult:
    """Install a shipped folder of the catalog into the workspace (hash checked), unless it is already there."""
    catalog = promptlab.catalog()
    source, settings = catalog.directory / shipped["folder"], catalog.world[settings_key]
    fingerprint = stable_hash({"code": code_version, "settings": settings,
                               "shipped_weights_sha256": shipped["weights_sha256"]})
    reused = is_current(directory, fingerprint)
    if not reused:
        install(source, shipped["weights_sha256"], directory, settings)
        mark_current(directory, fingerprint)
    context.log.info(f"{model}: shipped weights {source} (SHA-256 {shipped['weights_sha256']} verified) "
                     f"{'already installed' if reused else 'installed'} at {directory}")
    summary = json.loads((directory / "training_summary.json").read_text())
    return dg.MaterializeResult(metadata={
        "path": path_value(directory), "source": "shipped", "shipped_from": path_value(source), "reused": reused,
        "fingerprint": fingerprint, "weights_sha256": shipped["weights_sha256"],
        **training_curves(f"{model} pretraining loss (shipped weights)", {"loss": summary.get("epoch_losses") or []})})


# pool "gpu": the torch-heavy assets (dagster_home_template.yaml limits each pool to one run at a time)
@dg.asset(group_name="embedded_world", deps=[pretraining_corpus], code_version=TINY_CLIP_CODE, kinds={"pytorch"},
          pool="gpu")
@synced(reads=(folders.corpus,), writes=(folders.backbone,))
def tiny_clip_backbone(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """tiny-clip: open_clip's native CLIP architecture pretrained contrastively (ClipLoss) on the corpus: the shipped
    weights (world.yaml `tiny_clip_weights`, hash checked), or the `tiny_clip` recipe with `--retrain-world`."""
    from models.backbones.tiny_clip import ClipPretrainConfig, install_shipped_weights, pretrain_tiny_clip
    from models.embedded.corpus import load_corpus_families, load_subject_captions

    corpus_dir = promptlab.workspace().corpus_dir

    def install(source, weights_sha256, directory, settings):
        return install_shipped_weights(source, weights_sha256, directory)

    def train(images, captions, directory, settings, on_progress):
        # families keep each batch's in-batch negatives within a family; subject captions feed the curriculum
        return pretrain_tiny_clip(images, captions, directory, ClipPretrainConfig(**settings),
                                  on_progress=on_progress, families=load_corpus_families(corpus_dir),
                                  subject_captions=load_subject_captions(corpus_dir))

    return shipped_or_pretrained(context, promptlab, "tiny-clip", "tiny_clip_weights", "tiny_clip", TINY_CLIP_CODE,
                                 promptlab.workspace().tiny_clip_dir, install, train)


@dg.asset(group_name="embedded_world", deps=[pretraining_corpus], code_version=DIFFUSION_CODE, kinds={"pytorch"},
          pool="gpu")
@synced(reads=(folders.corpus,), writes=(folders.diffusion_model,))
def tiny_diffusion_model(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """A small diffusers UNet2DModel + DDPM scheduler trained on the corpus images (a save_pretrained folder): the
    shipped weights (world.yaml `diffusion_weights`, hash checked), or the `diffusion` recipe with `--retrain-world`."""
    from models.backbones.tiny_diffusion import DiffusionPretrainConfig, install_shipped_diffusion, pretrain_diffusion

    def install(source, weights_sha256, directory, settings):
        return install_shipped_diffusion(source, weights_sha256, directory, DiffusionPretrainConfig(**settings))

    def train(images, captions, directory, settings, on_progress):
        return pretrain_diffusion(images, directory, DiffusionPretrainConfig(**settings), on_progress=on_progress)

    return shipped_or_pretrained(context, promptlab, "tiny diffusion model", "diffusion_weights", "diffusion",
                                 DIFFUSION_CODE, promptlab.workspace().diffusion_dir, install, train)
