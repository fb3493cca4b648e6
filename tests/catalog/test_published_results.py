"""assets_catalog/published_results.yaml: the shipped file holds the published tables of the project's notes, copied
exactly (the expected tables below are BASELINES.md A2's and PAPERS.md's, typed in again), and a malformed file is
refused naming the file, the row and the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR, CatalogError
from models.catalog.published import PUBLISHED_RESULTS_FILE, load_published_results

SHOTS = (1, 2, 4, 8, 16)
# BASELINES.md A2: ViT-B/16, 3 seeds, compiled by CLIP-SVD's README (ZS CLIP: 65.36, shot-independent).
VIT_B16_FEW_SHOT = {
    "linear_probe": (45.77, 56.92, 66.79, 73.43, 78.39),
    "coop": (68.09, 70.13, 73.59, 76.45, 79.01),
    "cocoop": (66.95, 67.63, 71.98, 72.92, 75.02),
    "prograd": (68.20, 71.78, 74.21, 77.93, 79.20),
    "kgcoop": (69.51, 71.57, 74.48, 75.82, 77.26),
    "maple": (69.27, 72.58, 75.37, 78.89, 81.79),
    "clip_adapter": (67.87, 70.20, 72.65, 76.92, 79.86),
    "tip_adapter": (68.89, 70.42, 72.69, 74.41, 76.44),
    "tip_adapter_f": (70.62, 73.08, 75.75, 78.51, 81.15),
    "lp_plus_plus": (70.35, 72.93, 75.77, 77.94, 80.32),
    "gda": (69.39, 73.09, 76.24, 79.71, 81.70),
    "proker": (71.32, 73.74, 76.23, 79.84, 82.01),
    "tcp": (70.63, 73.59, 76.07, 78.39, 80.98),
    "clip_lora": (72.20, 75.41, 77.32, 80.10, 82.89),
}
# BASELINES.md A2: RN50, Tip-Adapter's exp.log averages (ZS 58.89).
RN50_FEW_SHOT = {
    "tip_adapter": (62.33, 64.62, 66.54, 68.50, 70.32),
    "tip_adapter_f": (64.60, 66.65, 69.67, 72.45, 75.83),
    "clip_adapter": (62.67, 65.55, 68.61, 71.40, 74.44),
}
# PAPERS.md headline numbers and BASELINES.md A2: base-to-new, ViT-B/16, average of 11 datasets (base, new, HM).
BASE_TO_NEW = {
    "zero_shot": (69.34, 74.22, 71.70), "coop": (82.69, 63.22, 71.66), "cocoop": (80.47, 71.69, 75.83),
    "kgcoop": (80.73, 73.60, 77.00), "prograd": (82.48, 70.75, 76.16), "vpt_deep": (80.24, 73.43, 76.68),
    "ivlp": (82.15, 74.07, 77.90), "maple": (82.28, 75.14, 78.55), "promptsrc": (84.26, 76.10, 79.97),
    "gda": (83.96, 74.53, 78.72), "tcp": (84.13, 75.36, 79.51), "clip_lora": (84.10, 74.80, 79.18),
    "protext": (72.95, 76.98, 74.91), "cupl": (72.56, 74.22, 73.38),
}


@pytest.fixture(scope="module")
def shipped():
    return load_published_results(DEFAULT_CATALOG_DIR)


def test_the_shipped_file_has_the_few_shot_averages_of_every_method_of_the_vit_b16_table(shipped):
    assert shipped.sha256 and len(shipped.rows) > 100
    average = {(row.method, row.shots): row.value for row in shipped.rows
               if (row.backbone, row.dataset, row.protocol, row.metric, row.variant)
               == ("ViT-B-16-openai", "average-11", "few_shot", "top1_accuracy", None)}
    expected = {(method, shots): value for method, row in VIT_B16_FEW_SHOT.items()
                for shots, value in zip(SHOTS, row)} | {("zero_shot", 0): 65.36}
    assert average == expected
    assert shipped.averages["average-11"].datasets == (
        "ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft", "SUN397",
        "DescribableTextures", "EuroSAT", "UCF101")


def test_the_shipped_file_has_the_rn50_base_to_new_tpt_and_menghini_averages(shipped):
    rn50 = {(row.method, row.variant, row.shots): row.value for row in shipped.rows
            if (row.backbone, row.dataset, row.protocol) == ("RN50-openai", "average-11", "few_shot")}
    for method, row in RN50_FEW_SHOT.items():
        assert [rn50[(method, None, shots)] for shots in SHOTS] == list(row), method
    assert rn50[("zero_shot", None, 0)] == 58.89
    assert [rn50[("clap", None, shots)] for shots in SHOTS] == [62.79, 66.07, 69.13, 72.08, 74.57]
    assert rn50[("taskres", "enhanced_base", 16)] == 74.42

    base_to_new = {(row.method, row.metric): (row.value, row.shots) for row in shipped.rows
                   if (row.backbone, row.dataset, row.protocol) == ("ViT-B-16-openai", "average-11", "base_to_new")}
    assert base_to_new == {
        (method, metric): (value, 0 if method in ("zero_shot", "protext", "cupl") else 16)
        for method, triple in BASE_TO_NEW.items()
        for metric, value in zip(("base_accuracy", "new_accuracy", "harmonic_mean"), triple)}

    tpt = {(row.method, row.variant): row.value for row in shipped.rows if row.protocol == "test_time"}
    assert tpt == {("zero_shot", None): 44.18, ("zero_shot", "ensemble"): 46.43, ("coop", None): 46.61,
                   ("zero_shot", "tpt"): 47.26, ("coop", "tpt"): 49.55}
    assert shipped.averages["average-imagenet-and-shifts"].datasets == (
        "ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
    menghini = {(row.method, row.variant, row.protocol, row.metric): row.value for row in shipped.rows
                if row.dataset == "average-menghini-6"}
    assert menghini == {("zero_shot", None, "ssl", "top1_accuracy"): 39.5,
                        ("zero_shot", None, "ul", "top1_accuracy"): 39.5,
                        ("zero_shot", None, "trzsl", "harmonic_mean"): 38.4,
                        ("coop", "grip", "ssl", "top1_accuracy"): 60.2, ("coop", "grip", "ul", "top1_accuracy"): 54.5,
                        ("coop", "grip", "trzsl", "harmonic_mean"): 70.9}
    assert shipped.averages["average-menghini-6"].datasets is None  # the notes do not list them: never compared


def test_every_row_names_a_source_with_its_tag_and_the_catalogs_names(shipped):
    assert {row.source for row in shipped.rows} == set(shipped.sources)
    for key, text in shipped.sources.items():
        assert "[" in text or "no tag" in text, f"{key}: the notes' tag, or that there is none"
    assert set(shipped.backbones_elsewhere) == {"RN50-openai"}  # backbones.yaml has no RN50: none is added


# ---------------------------------------------------------------------------------------------------- refusals
def small_catalog(folder: Path, content: dict) -> Path:
    """A catalog folder with the shipped backbones and suites, and `content` as its published_results.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEFAULT_CATALOG_DIR / "backbones.yaml", folder / "backbones.yaml")
    shutil.copytree(DEFAULT_CATALOG_DIR / "suites", folder / "suites")
    (folder / PUBLISHED_RESULTS_FILE).write_text(yaml.safe_dump(content, sort_keys=False))
    return folder


def row(**changes) -> dict:
    base = {"method": "coop", "backbone": "ViT-B-16-openai", "dataset": "Caltech101", "protocol": "few_shot",
            "shots": 16, "metric": "top1_accuracy", "value": 91.5, "source": "paper"}
    return {key: value for key, value in {**base, **changes}.items() if value != "(left out)"}


def content(*rows: dict, **sections) -> dict:
    return {"sources": {"paper": "[table] a paper's Table 1"}, **sections,
            "rows": [row(shots=1), row(shots=2), *rows]}


ROW = r"published_results.yaml: rows\[2\] \(coop, ViT-B-16-openai, Caltech101\): "
REFUSALS = [
    ("unknown-method", content(row(method="cooop")), r"published_results.yaml: rows\[2\] \(cooop, .*\): 'method' "
     r"'cooop' is unknown \(did you mean 'coop'\?\)"),
    ("unknown-protocol", content(row(protocol="fewshot")), ROW + r"'protocol' 'fewshot' is unknown \(did you mean "
     r"'few_shot'\?\)"),
    ("negative-value", content(row(value=-1.0)), ROW + r"'value' must be a percentage: a number in \[0, 100\], got "
     r"-1.0"),
    ("over-100-value", content(row(value=100.5)), ROW + r"'value' must be a percentage.*got 100.5"),
    ("fraction-as-text", content(row(value="91.5")), ROW + r"'value' must be a percentage.*got '91.5'"),
    ("missing-source", content(row(source="(left out)")), ROW + r"missing required field\(s\) \['source'\]"),
    ("unknown-source", content(row(source="papre")), ROW + r"'source' 'papre' is unknown \(did you mean 'paper'\?\)"),
    ("duplicate", content(row(shots=1, value=80.0)), ROW + r"the same method, variant, backbone, dataset, protocol, "
     r"shots and metric as rows\[0\]"),
    ("unknown-backbone", content(row(backbone="RN50-openai")), r"rows\[2\] \(coop, RN50-openai, Caltech101\): "
     r"'backbone' 'RN50-openai' is unknown"),
    ("unknown-dataset", content(row(dataset="average-11")), r"rows\[2\] \(coop, ViT-B-16-openai, average-11\): "
     r"'dataset' 'average-11' is unknown"),
    ("metric-of-another-protocol", content(row(metric="harmonic_mean")), ROW + r"'metric' 'harmonic_mean' is "
     r"unknown.*\['top1_accuracy'\] \(the metrics of few_shot\)"),
    ("negative-shots", content(row(shots=-4)), ROW + r"'shots' must be an integer >= 0, or null, got -4"),
    ("missing-shots", content(row(shots="(left out)")), ROW + r"missing required field\(s\) \['shots'\]"),
    ("misspelt-field", content({**row(), "vaule": 3.0}), ROW + r"unknown field\(s\) \['vaule'\] \(did you mean "
     r"'value'\?\)"),
    ("unused-elsewhere-method", content(methods_elsewhere={"gda": "GDA"}),
     r"published_results.yaml: methods_elsewhere: \['gda'\] named by no row"),
    ("average-of-unknown-dataset", content(averages={"average-2": {"description": "two", "datasets": ["Caltech101",
                                                                                                        "Caltech"]}}),
     r"published_results.yaml: averages.average-2: 'datasets' names \['Caltech'\], not datasets of any suite"),
]


@pytest.mark.parametrize("case, raw, message", REFUSALS, ids=[case[0] for case in REFUSALS])
def test_a_malformed_file_is_refused_naming_the_file_the_row_and_the_field(tmp_path, case, raw, message):
    folder = small_catalog(tmp_path / "catalog", raw)
    with pytest.raises(CatalogError, match=message):
        load_published_results(folder)


def test_names_of_the_elsewhere_lists_and_averages_are_accepted(tmp_path):
    folder = small_catalog(tmp_path / "catalog", content(
        row(method="gda"), row(backbone="RN50-openai"), row(dataset="average-2"), row(protocol="base_to_new",
                                                                                      metric="base_accuracy"),
        row(shots=None, protocol="trzsl", metric="harmonic_mean", variant="grip"),
        methods_elsewhere={"gda": "GDA, not in PromptLab"}, backbones_elsewhere={"RN50-openai": "ResNet-50"},
        averages={"average-2": {"description": "two", "datasets": ["Caltech101", "OxfordPets"]}}))
    published = load_published_results(folder)
    assert [(r.method, r.backbone, r.dataset, r.shots, r.variant) for r in published.rows[2:]] == [
        ("gda", "ViT-B-16-openai", "Caltech101", 16, None), ("coop", "RN50-openai", "Caltech101", 16, None),
        ("coop", "ViT-B-16-openai", "average-2", 16, None), ("coop", "ViT-B-16-openai", "Caltech101", 16, None),
        ("coop", "ViT-B-16-openai", "Caltech101", None, "grip")]
    assert published.averages["average-2"].datasets == ("Caltech101", "OxfordPets")
