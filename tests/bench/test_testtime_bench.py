"""The test-time tuning benchmark: its reference-style loop predicts what the batched path predicts, and a tiny
end-to-end run writes the three variants' figures and their ratios."""

import json

import numpy as np
import pytest

from bench.inputs import resolve_images
from bench.testtime import VARIANTS, RolledCopies, compare_predictions, main, reference_tune_test_images
from models.catalog.testtime_settings import published_settings
from models.experiments import build_classifier
from models.testtime.tuning import TestTimeTuner, tune_test_images
from models.workspace import Workspace


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def shapes_images(tmp_path_factory):
    """The first 3 embedded Shapes images (one per class), generated into an empty workspace's scratch."""
    root = tmp_path_factory.mktemp("testtime_bench")
    images = resolve_images(Workspace(root / "workspace"), root / "scratch", "Shapes", 1, ["a photo of a {}."])
    return images, 3


@pytest.mark.parametrize("mode, overrides", [
    ("tpt", {"n_views": 8, "steps": 1}),
    ("tpt", {"n_views": 8, "steps": 2}),
    ("difftpt", {"n_views": 4, "n_generated_views": 4, "steps": 2, "entropy_fraction": 0.1}),
])
def test_the_reference_loop_predicts_what_the_batched_path_predicts(random_tiny_clip, shapes_images, tmp_path, mode,
                                                                    overrides):
    images, count = shapes_images
    settings = published_settings(mode, overrides)
    steps, views = settings.steps, settings.n_views + settings.n_generated_views
    classifier = build_classifier(random_tiny_clip.model, random_tiny_clip.tokenizer, "coop",
                                  {"context_init": "a photo of a"}, images.classnames, images.templates)
    tuner = TestTimeTuner(classifier, settings)
    arguments = (random_tiny_clip, images.image_dir, images.relative_paths[:count], images.content_hashes[:count])
    generated = {"generator": RolledCopies(), "variation_cache_dir": tmp_path} if mode == "difftpt" else {}
    batched = tune_test_images(tuner, True, *arguments, **generated)
    reference = reference_tune_test_images(tuner, *arguments, **generated)

    np.testing.assert_array_equal(reference.log_probabilities.argmax(1), batched.log_probabilities.argmax(1))
    np.testing.assert_allclose(reference.log_probabilities, batched.log_probabilities, rtol=0, atol=1e-4)
    np.testing.assert_allclose(reference.log_probabilities_before, batched.log_probabilities_before, rtol=0, atol=1e-4)
    np.testing.assert_allclose(reference.loss_before, batched.loss_before, rtol=1e-4)
    # TPT: int(8 * 0.1) = 0, at least one is kept; DiffTPT: 7 others, 5 by cosine, + v0 = 6, int(6 * 0.1) = 0 -> 1
    assert reference.views_kept == batched.views_kept == [1] * count
    # tuning moved the predictions (so the agreement above is not that of two untouched prompts)
    assert np.abs(batched.log_probabilities - batched.log_probabilities_before).max() > 1e-6
    assert reference.encoded_views == count * (views * steps + 1) and batched.encoded_views == count * views
    check = compare_predictions(batched, reference, tolerance=1e-4)
    assert check["passed"] and check["argmax_agreement"] == 1.0


def tiny_run(tmp_path, output):
    return main(["--workspace", str(tmp_path / "workspace"), "--architectures", "tiny-clip",
                 "--images", "tiny-clip=2", "--setting", "n_views=8", "--repeats", "1", "--threads", "1",
                 "--device", "cpu", "--output", str(output)])


def workspace_warehouse(tmp_path):
    from models.warehouse import Warehouse
    from models.workspace import Workspace

    workspace = Workspace(tmp_path / "workspace")
    return Warehouse(workspace.warehouse_path, workspace.predictions_dir)


def test_a_tiny_run_writes_the_three_variants_and_their_ratios(tmp_path, capsys):
    import torch

    output = tmp_path / "results" / "testtime.json"
    torch.set_num_threads(2)
    assert tiny_run(tmp_path, output) == 0
    assert torch.get_num_threads() == 2  # the run's --threads 1 is restored after it
    result = json.loads(output.read_text())
    (entry,) = result["architectures"]
    assert entry["backbone"]["weights_source"].startswith("random")  # the empty workspace has no pretrained one
    assert entry["images"]["n_images"] == 2 and result["settings"]["n_views"] == 8
    speed = {variant: entry["variants"][variant]["images_per_second"] for variant in VARIANTS}
    assert set(speed) == {"batched-cached", "batched", "reference"} and all(v > 0 for v in speed.values())
    assert entry["speedups"]["batched-cached over reference"] == pytest.approx(speed["batched-cached"] /
                                                                               speed["reference"])
    assert entry["speedups"]["batched over reference"] == pytest.approx(speed["batched"] / speed["reference"])
    assert entry["variants"]["batched-cached"]["views_encoded_per_pass"] == 0  # the timed pass read the cache
    assert entry["check"]["reference_vs_batched"]["passed"]
    assert entry["check"]["reference_vs_batched"]["argmax_agreement"] == 1.0
    assert entry["check"]["cached_vs_batched"]["max_abs_log_probability_difference"] == 0.0
    assert result["git_commit"] and result["code_version"] and result["torch_threads"] == 1
    assert "batched-cached" in capsys.readouterr().out
    recorded = workspace_warehouse(tmp_path).query(
        "SELECT benchmark, method, variant, images_per_second, speedup, baseline_variant FROM latest_benchmark "
        "ORDER BY variant")
    assert set(recorded["benchmark"]) == {"test-time"} and set(recorded["method"]) == {"tpt"}
    by_variant = {r["variant"]: r for r in recorded.iter_rows(named=True)}
    assert by_variant["batched"]["speedup"] == pytest.approx(entry["speedups"]["batched over reference"])
    assert by_variant["reference"]["baseline_variant"] is None
    assert {v: r["images_per_second"] for v, r in by_variant.items()} == pytest.approx(speed)


def test_nothing_is_written_when_the_variants_disagree(tmp_path, monkeypatch, capsys):
    import bench.testtime

    monkeypatch.setattr(bench.testtime, "FP32_TOLERANCE", 0.0)  # batched and single-view encodes differ in last bits
    output = tmp_path / "testtime.json"
    assert tiny_run(tmp_path, output) == 1
    assert "do not predict alike" in capsys.readouterr().err
    assert not output.exists()
    assert not workspace_warehouse(tmp_path).database_path.exists()


def test_cuda_is_refused_clearly_where_there_is_none(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        main(["--device", "cuda", "--output", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()
