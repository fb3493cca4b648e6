"""Readers for every on-disk layout of the field's benchmark datasets, one registry, one entry point.

``read_listing(layout, root, **options)`` returns a ``DatasetListing``: split records (``RECORD_SCHEMA``), the image
root they are relative to, the complete class-name list by label, structural facts (test-only, val-is-test,
duplicate names, generated split) and notes a user must read. Each reader follows the reference code of its
layout (Dassl/CoOp, DomainBed; shared/DATASETS.md §1-§5) and refuses, with a ``DatasetLayoutError`` naming the
file, folder or line and the fix, a layout that would silently give wrong labels, names or splits. ``read_listing``
also refuses an image reached through a symlink leading outside the dataset's root (``follow_symlinks`` allows it).

Layouts (key: reader module): ``split_zhou`` and ``fgvc_aircraft`` (CoOp's fine-grained sets), ``imagenet``,
``imagenet_v2``, ``imagenet_sketch``, ``imagenet_a``, ``imagenet_r`` (ImageNet and its shifted test sets),
``domainbed`` (leave-one-domain-out), ``image_folder`` (plain class folders, split here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from models.data.layouts.domainbed import read_domainbed
from models.data.layouts.fgvc_aircraft import read_fgvc_aircraft
from models.data.layouts.image_folder import read_image_folder_layout
from models.data.layouts.imagenet import read_imagenet
from models.data.layouts.imagenet_shifts import (
    read_imagenet_a,
    read_imagenet_r,
    read_imagenet_sketch,
    read_imagenet_v2,
)
from models.data.layouts.listing import (DatasetLayoutError, DatasetListing, DatasetStructure,
                                         refuse_links_leaving_root)
from models.data.layouts.recognise import recognise_layout, refuse_misdeclared
from models.data.layouts.split_zhou import COOP_DATASETS, read_split_zhou

LAYOUTS: dict[str, Callable[..., DatasetListing]] = {
    "split_zhou": read_split_zhou,
    "fgvc_aircraft": read_fgvc_aircraft,
    "imagenet": read_imagenet,
    "imagenet_v2": read_imagenet_v2,
    "imagenet_sketch": read_imagenet_sketch,
    "imagenet_a": read_imagenet_a,
    "imagenet_r": read_imagenet_r,
    "domainbed": read_domainbed,
    "image_folder": read_image_folder_layout,
}


def read_listing(layout: str, root: Path, follow_symlinks: bool = False, **options) -> DatasetListing:
    """Read the dataset at ``root`` in ``layout`` (a key of ``LAYOUTS``) with that reader's keyword options.

    A root that is recognisably another layout, or inside a dataset of this layout whose root is elsewhere, is
    refused first (``refuse_misdeclared``). A listed image reached through a symlink that leads outside the
    (resolved) root is refused, naming the link and its target, unless ``follow_symlinks`` (the catalog entry's
    ``follow_symlinks: true``): otherwise a file outside the dataset would be indexed and trained on unnoticed.
    """
    if layout not in LAYOUTS:
        raise DatasetLayoutError(layout, "unknown layout", f"use one of {', '.join(LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(
            root, "dataset root not found" if not root.exists() else "dataset root is a file",
            "pass the dataset's folder (each reader's docstring in models/data/layouts/ says which)",
        )
    refuse_misdeclared(layout, root)
    listing = LAYOUTS[layout](root, **options)
    if not follow_symlinks:
        refuse_links_leaving_root(root, listing)
    return listing


__all__ = [
    "COOP_DATASETS", "LAYOUTS", "DatasetLayoutError", "DatasetListing", "DatasetStructure", "read_listing",
    "recognise_layout", "refuse_misdeclared",
]
