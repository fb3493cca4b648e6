"""FGVC-Aircraft in CoOp's layout (the archive's ``data/`` folder renamed ``fgvc_aircraft``).

``variants.txt`` lists the 100 variants; label = line position (CoOp's ``cname2lab``). ``images_variant_{train,
val,test}.txt`` hold ``"<image id> <variant with spaces>"`` lines; image = ``images/<id>.jpg``. The official 3-way
split is used as is.
"""

from __future__ import annotations

from pathlib import Path

from models.data.layouts.listing import (
    DatasetLayoutError,
    DatasetListing,
    DatasetStructure,
    prompt_name,
    records_frame,
    refuse_single_class,
    require_folder,
)

VARIANTS_FILE = "variants.txt"
SPLIT_FILES = {split: f"images_variant_{split}.txt" for split in ("train", "val", "test")}
ARCHIVE_FIX = ("the dataset root is the FGVC-Aircraft archive's fgvc-aircraft-2013b/data folder (CoOp renames it "
               "fgvc_aircraft)")


def _root_fix(root: Path) -> str:
    for candidate in (root / "data", root / "fgvc-aircraft-2013b" / "data"):
        if (candidate / VARIANTS_FILE).is_file():
            return f"pass {candidate} as the root ({ARCHIVE_FIX})"
    return f"extract fgvc-aircraft-2013b.tar.gz; {ARCHIVE_FIX}"


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of the non-blank lines."""
    return [(number, line.strip()) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip()]


def read_fgvc_aircraft(root: Path) -> DatasetListing:
    """Records of FGVC-Aircraft (train, val, test from the official split files). No options."""
    root = Path(root)
    for name in (VARIANTS_FILE, *SPLIT_FILES.values()):
        if not (root / name).is_file():
            raise DatasetLayoutError(root / name, "FGVC-Aircraft file not found", _root_fix(root))
    require_folder(root / "images", "FGVC-Aircraft image folder", _root_fix(root))
    variants: list[str] = []
    line_of_variant: dict[str, int] = {}
    for number, variant in _lines(root / VARIANTS_FILE):
        if variant in line_of_variant:
            raise DatasetLayoutError(
                f"{root / VARIANTS_FILE}:{number}",
                f"variant {variant!r} listed twice (lines {line_of_variant[variant]} and {number}); labels are line "
                "positions", "remove the repeated line (or restore the archive's variants.txt)",
            )
        line_of_variant[variant] = number
        variants.append(variant)
    label_of = {variant: label for label, variant in enumerate(variants)}
    classnames = tuple(prompt_name(variant) for variant in variants)
    refuse_single_class(classnames, root / VARIANTS_FILE, "restore the archive's variants.txt (100 lines)")
    rows: list[tuple[str, int, str, str]] = []
    listed_at: dict[str, str] = {}
    labels_in: dict[str, set[int]] = {}
    for split, file_name in SPLIT_FILES.items():
        labels_in[split] = set()
        for number, line in _lines(root / file_name):
            words = line.split(" ")
            image, variant = words[0], " ".join(words[1:])
            where = f"{root / file_name}:{number}"
            if variant not in label_of:
                raise DatasetLayoutError(
                    where, f"variant {variant!r} is not in {VARIANTS_FILE}",
                    "use the split files and variants.txt of the same archive (the 'variant' level, not "
                    "'family' or 'manufacturer')",
                )
            if image in listed_at:
                raise DatasetLayoutError(
                    where, f"image {image} is listed twice (first at {listed_at[image]})",
                    "remove the repeated line, or restore the split files from the archive",
                )
            listed_at[image] = where
            labels_in[split].add(label_of[variant])
            rows.append((f"{image}.jpg", label_of[variant], classnames[label_of[variant]], split))
    for present, absent in (("train", "test"), ("test", "train")):
        lacking = sorted(labels_in[present] - labels_in[absent])
        if lacking:
            raise DatasetLayoutError(
                root / SPLIT_FILES[absent],
                f"{len(lacking)} variant(s) in {present} have no {absent} image: "
                f"{', '.join(repr(variants[label]) for label in lacking[:8])}",
                "restore the split files from the archive",
            )
    return DatasetListing(
        records=records_frame(rows), image_root=root / "images", classnames=classnames,
        structure=DatasetStructure(),
    )


__all__ = ["read_fgvc_aircraft"]
