"""A micro world for running the whole Dagster graph in-process: two small embedded datasets, a broken real-layout
dataset, a tiny corpus and one-epoch pretraining. The environment is set before `pipelines` is imported, because
partitions are read from the catalog when the definitions load."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from models.catalog import DEFAULT_CATALOG_DIR

MICRO_ROOT = Path(tempfile.mkdtemp(prefix="promptlab-micro-"))
# The catalog, the datasets and the workspace live in a folder whose name holds glob characters, so that the whole
# run proves it reads each file by its literal path (a user's `proj [v2]`). DuckDB (1.5) cannot write a database under
# a folder named with a `?` (it puts the write-ahead log at `<folder up to the ?>.wal?...`): the warehouse writes
# such a database through a temporary copy, which this folder exercises too. Dagster's own home stays outside: its
# SQLite URL cannot hold a `?`.
GLOB_FOLDER = MICRO_ROOT / "we'ird [x]{a,b} *?"
MICRO_CATALOG = GLOB_FOLDER / "catalog"
BROKEN_DATASET = GLOB_FOLDER / "broken_dataset"


def _write_micro_catalog() -> None:
    shutil.copytree(DEFAULT_CATALOG_DIR, MICRO_CATALOG)
    datasets = yaml.safe_load((MICRO_CATALOG / "datasets.yaml").read_text())["datasets"]
    keep = [d for d in datasets if d["name"] in ("Shapes", "Digits")]
    keep.append({"name": "Broken", "source": "coop", "root": str(BROKEN_DATASET), "template": "a photo of a {}."})
    (MICRO_CATALOG / "datasets.yaml").write_text(yaml.safe_dump({"datasets": keep}))
    world = yaml.safe_load((MICRO_CATALOG / "world.yaml").read_text())
    world.pop("tiny_clip_weights", None)  # no shipped weights: the asset pretrains the shortened recipe below
    world["corpus"]["num_pairs"] = 384
    world["tiny_clip"].update(epochs=1, batch_size=128, warmup_steps=1)
    world["diffusion"].update(epochs=1, batch_size=64)
    world["benchmark"]["images_per_class"] = {"train": 5, "val": 4, "test": 3}
    (MICRO_CATALOG / "world.yaml").write_text(yaml.safe_dump(world))
    grid = [
        {"method": "zero_shot"},
        {"method": "coop", "shots": [2], "seeds": [1, 2], "optimization": {"epochs": 2},
         "parameters": {"n_context": 4}},
        {"method": "coop", "shots": [2], "seeds": [1], "optimization": {"epochs": 2}, "parameters": {"n_context": 4},
         "augmentation": {"variations_per_image": 2, "strength": 0.3, "similarity_threshold": 0.5,
                          "num_inference_steps": 2}},
        {"method": "coop", "shots": [2], "seeds": [1], "optimization": {"epochs": 2}, "parameters": {"n_context": 4},
         "pseudolabels": {"strategy": "fpl", "per_class": 2}},
        {"method": "coop", "shots": [2], "seeds": [1], "optimization": {"epochs": 2}, "parameters": {"n_context": 4},
         "protocol": "base_to_new"},
        # vision-prompt methods train on images through the same loop (depth within the tiny towers)
        {"method": "maple", "shots": [2], "seeds": [1], "optimization": {"epochs": 2, "batch_size": 4},
         "parameters": {"prompt_depth": 2}, "protocol": "base_to_new"},
        {"method": "promptsrc", "shots": [2], "seeds": [1], "optimization": {"epochs": 2, "batch_size": 4},
         "parameters": {"text_prompt_depth": 2, "vision_prompt_depth": 2, "aggregation_mean_epoch": 1.5}},
        # the pseudolabel line: every setting, every strategy once (10 rounds of 1 epoch for the iterative ones)
        {"method": "zero_shot", "setting": "trzsl", "seeds": [1]},
        {"method": "coop", "setting": "ssl", "seeds": [1], "optimization": {"epochs": 1},
         "parameters": {"n_context": 4}, "pseudolabels": {"strategy": "grip"}},
        {"method": "coop", "setting": "trzsl", "seeds": [1], "optimization": {"epochs": 1},
         "parameters": {"n_context": 4}, "pseudolabels": {"strategy": "ifpl", "per_class": 1}},
        {"method": "coop", "setting": "ul", "seeds": [1], "optimization": {"epochs": 1},
         "parameters": {"n_context": 4}, "pseudolabels": {"strategy": "fpl", "per_class": 2}},
        # visual and multimodal prompts through the same rounds (they train on images, not cached features)
        {"method": "vpt_shallow", "setting": "ul", "seeds": [1], "optimization": {"epochs": 1, "batch_size": 8},
         "pseudolabels": {"strategy": "ifpl", "per_class": 2}},
        {"method": "maple", "setting": "trzsl", "seeds": [1], "optimization": {"epochs": 1, "batch_size": 8},
         "parameters": {"prompt_depth": 2}, "pseudolabels": {"strategy": "grip"}},
        # bad input on purpose: K = 50 per class is beyond every micro pool; it must fail before any training
        {"method": "coop", "setting": "ssl", "seeds": [1], "optimization": {"epochs": 1},
         "parameters": {"n_context": 4}, "pseudolabels": {"strategy": "fpl", "per_class": 50}},
        # upstream initialisations (GRAM, PVP): learned on the micro corpus first, the experiments start from them
        {"method": "gram_coop", "initialisation": "gram-coop", "shots": [2], "seeds": [1],
         "optimization": {"epochs": 1}, "parameters": {"n_context": 4}},
        {"method": "pvp_vpt", "initialisation": "pvp-vpt", "shots": [2], "seeds": [1],
         "optimization": {"epochs": 1, "batch_size": 4}, "parameters": {"n_tokens": 2}},
        {"method": "tfup", "setting": "ul", "seeds": [1]},
        {"method": "tfup_t", "setting": "ul", "seeds": [1], "optimization": {"epochs": 2},
         "parameters": {"refined_set_epochs": 1}},
    ]
    # Transfer: Shapes' CoOp and PromptSRC (takes images) prompts on Digits' classes; Broken is left out of the
    # targets (its curation fails on purpose). No micro dataset is a shifted variant: the catalog tests cover DG.
    transfer = {"experiments": ["coop-k2-s?", "promptsrc-k2-s1"],
                "cross_dataset": {"sources": ["Shapes"], "targets": ["Digits"]}}
    # Test-time tuning on Shapes (the micro world has no shifted variant): TPT from zero-shot and from CoOp, and
    # DiffTPT with the embedded diffusion model, on 10 test images with few views.
    test_time = {"sources": ["Shapes"], "max_test_images": 10,
                 "modes": {"tpt": {"n_views": 8},
                           "difftpt": {"n_views": 5, "n_generated_views": 4, "steps": 2,
                                       "diffusion_backbone": "embedded-ddpm",
                                       "diffusion": {"strength": 0.5, "num_inference_steps": 2}}},
                 "runs": [{"mode": "tpt", "start": "zeroshot", "seeds": [1, 2]},
                          {"mode": "tpt", "start": "coop-k2-s1"},
                          {"mode": "difftpt", "start": "zeroshot", "seeds": [1]}]}
    initialisations = {
        "gram-coop": {"method": "gram_coop", "corpus_pairs": 384, "parameters": {"n_context": 4},
                      "meta": {"n_domains": 2, "n_way": 2, "outer_steps": 2, "tasks_per_step": 1}},
        "pvp-vpt": {"method": "pvp_vpt", "corpus_pairs": 64, "parameters": {"n_tokens": 2},
                    "optimization": {"epochs": 1, "batch_size": 32}}}
    (MICRO_CATALOG / "experiments.yaml").write_text(yaml.safe_dump({"grid": grid, "transfer": transfer,
                                                                   "test_time": test_time,
                                                                   "initialisations": initialisations}))


def _write_broken_dataset() -> None:
    """A CoOp-layout dataset with a corrupt image, a missing file and a row naming an unknown class."""
    from PIL import Image

    images = BROKEN_DATASET / "images"
    rows = {"train": [], "val": [], "test": []}
    for label, name in enumerate(["circle", "square"]):
        (images / name).mkdir(parents=True)
        for split in rows:
            for i in range(3):
                relative = f"{name}/{split}_{i}.png"
                Image.new("RGB", (32, 32), (label * 200 + 20, 10 * i, 50 + 60 * ["train", "val", "test"].index(split))
                          ).save(images / relative)
                rows[split].append([relative, label, name])
    (images / "circle/train_0.png").write_bytes(b"not a png at all")
    rows["train"].append(["square/missing.png", 1, "square"])
    # a row naming a class the label does not have (an image of its own: an image listed twice is refused earlier,
    # by the reader)
    Image.new("RGB", (32, 32), (220, 90, 10)).save(images / "square/test_3.png")
    rows["test"].append(["square/test_3.png", 1, "hexagon"])
    (BROKEN_DATASET / "split_zhou_Broken.json").write_text(json.dumps(rows))


_write_micro_catalog()
_write_broken_dataset()
os.environ["PROMPTLAB_CATALOG"] = str(MICRO_CATALOG)
os.environ["PROMPTLAB_WORKSPACE"] = str(GLOB_FOLDER / "workspace")
os.environ["DAGSTER_HOME"] = str(MICRO_ROOT / "dagster_home")
(MICRO_ROOT / "dagster_home").mkdir()
