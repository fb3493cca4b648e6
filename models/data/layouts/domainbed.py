"""DomainBed's layout and leave-one-domain-out split: ``<root>/<domain>/<class>/<image>``.

As DomainBed's ``MultipleEnvironmentImageFolder`` and ``train.py``: the domains (environments) are the sorted
sub-folders of root, each read as a torchvision ``ImageFolder`` (sorted class folders; images found by walking each
class folder, sorted, kept by extension). Every domain ``i`` is split by
``misc.split_dataset(env, int(len(env) * holdout_fraction), misc.seed_hash(trial_seed, i))`` into out (the first
``n`` of a ``np.random.RandomState`` shuffle) and in (the rest).

Records: train = the in-splits of the training domains, val = their out-splits (DomainBed's training-domain
validation), test = the in-split of ``test_domain`` (DomainBed reports ``env{t}_in_acc``). ``relative_path`` starts
with the domain folder. The split is DomainBed's own protocol, so ``structure.generated_split`` is False.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from models.data.layouts.listing import (
    DatasetLayoutError,
    DatasetListing,
    DatasetStructure,
    preview,
    prompt_name,
    records_frame,
    refuse_single_class,
    require_folder,
)

# torchvision.datasets.folder.IMG_EXTENSIONS (0.29), matched case-insensitively as has_file_allowed_extension does.
IMAGEFOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# DomainBed's datasets: folder -> its sorted environment folders (DomainBed's datasets.py, download.py).
DOMAINBED_DATASETS: dict[str, tuple[str, ...]] = {
    "PACS": ("art_painting", "cartoon", "photo", "sketch"),
    "VLCS": ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
    "office_home": ("Art", "Clipart", "Product", "Real World"),
    "terra_incognita": ("location_100", "location_38", "location_43", "location_46"),
    "domain_net": ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
}


def seed_hash(*args) -> int:
    """DomainBed's ``misc.seed_hash``: an integer seed from the MD5 of ``str(args)``."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


def split_keys(length: int, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """DomainBed's ``misc.split_dataset`` on indices: (first ``holdout`` shuffled keys, the rest)."""
    keys = list(range(length))
    np.random.RandomState(seed).shuffle(keys)
    return keys[:holdout], keys[holdout:]


def image_folder_samples(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """torchvision ``ImageFolder``'s (classes, samples) with paths relative to ``folder``, without torchvision.

    Hidden class folders count as classes there; they are refused here instead (a stray ``.ipynb_checkpoints``
    would take a label). A class with no image is refused, as ImageFolder does.
    """
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    hidden = [name for name in classes if name.startswith(".")]
    if hidden:
        raise DatasetLayoutError(
            folder / hidden[0], "hidden folder among the class folders (ImageFolder would make it a class)",
            "remove it",
        )
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        class_folder = folder / name
        found = [
            os.path.relpath(os.path.join(walk_root, file_name), folder).replace(os.sep, "/")
            for walk_root, _, file_names in sorted(os.walk(class_folder, followlinks=True))
            for file_name in sorted(file_names)
            if file_name.lower().endswith(IMAGEFOLDER_EXTENSIONS)
        ]
        if not found:
            raise DatasetLayoutError(
                class_folder, f"class folder has no image (extensions {', '.join(IMAGEFOLDER_EXTENSIONS)})",
                "restore its images, or remove the folder from every domain",
            )
        samples.extend((path, label) for path in found)
    return classes, samples


def read_domainbed(
    root: Path, *, test_domain: str, holdout_fraction: float = 0.2, trial_seed: int = 0,
) -> DatasetListing:
    """Records of one leave-one-domain-out split of a DomainBed dataset.

    Options: ``test_domain`` (required: the domain folder held out, e.g. "sketch" for PACS); ``holdout_fraction``
    (DomainBed's default 0.2); ``trial_seed`` (DomainBed's ``--trial_seed``, default 0).
    """
    root = Path(root)
    require_folder(root, "DomainBed dataset folder", "pass the dataset folder (e.g. $DATA/PACS) as root")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    domains = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    hidden = [name for name in domains if name.startswith(".")]
    if hidden:
        raise DatasetLayoutError(root / hidden[0], "hidden folder among the domain folders (DomainBed would make it "
                                 "a domain)", "remove it")
    if len(domains) < 2:
        raise DatasetLayoutError(
            root, f"{len(domains)} domain folder(s); leave-one-domain-out needs at least two",
            "pass the dataset folder that holds one folder per domain (e.g. PACS/ with art_painting, cartoon, photo, "
            "sketch)",
        )
    if test_domain not in domains:
        raise DatasetLayoutError(root, f"test_domain {test_domain!r} is not a domain folder here",
                                 f"pass one of {', '.join(repr(name) for name in domains)}")
    domain_samples: list[list[tuple[str, int]]] = []
    classes: list[str] | None = None
    for domain in domains:
        domain_classes, samples = image_folder_samples(root / domain)
        if classes is None:
            classes = domain_classes
        elif domain_classes != classes:
            missing = sorted(set(classes) - set(domain_classes))
            extra = sorted(set(domain_classes) - set(classes))
            raise DatasetLayoutError(
                root / domain,
                f"its class folders differ from {domains[0]}'s (missing: {preview(missing) or 'none'}; extra: "
                f"{preview(extra) or 'none'}); each domain is labelled by its own sorted class folders, so labels "
                "would not match across domains",
                "give every domain the same class folders (restore or remove the ones named)",
            )
        domain_samples.append([(f"{domain}/{path}", label) for path, label in samples])
    assert classes is not None
    classnames = tuple(prompt_name(name) for name in classes)
    refuse_single_class(classnames, root)
    rows: dict[str, list[tuple[str, int, str, str]]] = {"train": [], "val": [], "test": []}
    for domain_index, (domain, samples) in enumerate(zip(domains, domain_samples)):
        out_keys, in_keys = split_keys(len(samples), int(len(samples) * holdout_fraction),
                                       seed_hash(trial_seed, domain_index))
        if domain == test_domain:
            chosen = (("test", in_keys),)
        else:
            chosen = (("train", in_keys), ("val", out_keys))
        for split, keys in chosen:
            rows[split].extend((samples[key][0], samples[key][1], classnames[samples[key][1]], split) for key in keys)
    return DatasetListing(
        records=records_frame(rows["train"] + rows["val"] + rows["test"]), image_root=root, classnames=classnames,
        structure=DatasetStructure(),
    )


__all__ = ["DOMAINBED_DATASETS", "IMAGEFOLDER_EXTENSIONS", "image_folder_samples", "read_domainbed", "seed_hash",
           "split_keys"]
