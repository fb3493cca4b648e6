"""The methods page (docs/methods.md) is what the registries generate, and every registered method, pseudolabel
strategy and test-time mode names a paper, where it hooks and a verification whose test exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models.catalog.testtime_settings import PUBLISHED_DEFAULTS
from models.methods_page import PSEUDOLABEL_CHECKS, REGENERATE, TEST_TIME_CHECKS, TEST_TIME_PAPERS, methods_page
from models.prompting.methods import METHODS
from models.prompting.methods.registry import Verification
from models.pseudolabels import STRATEGIES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def page() -> str:
    return methods_page()


def test_docs_methods_md_is_the_generated_page(page):
    committed = (ROOT / "docs" / "methods.md").read_text()
    assert committed == page, f"docs/methods.md is out of date with the registries: run {REGENERATE}"


def assert_test_exists(verification: Verification, owner: str) -> None:
    path = ROOT / verification.test_file
    assert path.is_file(), f"{owner}: its verification names {verification.test_file}, which does not exist"
    function = verification.test.partition("::")[2]
    assert function, f"{owner}: its verification names a file, not a test (file.py::test_name): {verification.test}"
    assert re.search(rf"^def {re.escape(function)}\(", path.read_text(), re.M), \
        f"{owner}: {verification.test_file} has no test {function}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_declares_paper_hooks_and_a_verification_whose_test_exists(name):
    spec = METHODS[name]
    assert spec.paper and spec.paper.authors and spec.paper.title and spec.paper.venue, f"{name}: no paper"
    assert spec.hooks and (spec.hook_points or not spec.trains_prompts), f"{name}: no hook points"
    assert spec.verification is not None, f"{name}: no verification"
    assert spec.verification.statement, f"{name}: its verification says nothing"
    assert_test_exists(spec.verification, name)


@pytest.mark.parametrize("kind, declared, registry", [
    ("pseudolabel strategy", PSEUDOLABEL_CHECKS, STRATEGIES),
    ("test-time mode", TEST_TIME_CHECKS, PUBLISHED_DEFAULTS),
])
def test_every_strategy_and_test_time_mode_has_a_verification_whose_test_exists(kind, declared, registry):
    assert set(declared) == set(registry), f"each registered {kind} needs a verification on the methods page"
    for name, verification in declared.items():
        assert_test_exists(verification, f"{kind} {name}")
    assert set(TEST_TIME_PAPERS) == set(PUBLISHED_DEFAULTS)


def test_the_page_shows_the_catalogs_published_value_where_it_differs_from_the_dataclass(page):
    # CoCoOp's dataclass keeps the shared pass size; methods.yaml publishes its own (image x class prompts per pass)
    assert "| `text_chunk_size` | `1024` (methods.yaml; dataclass `128`) |" in page
