"""Fixtures of the evaluation tests; the builders live in evaluation_synthetic.py so tests can import them."""

from __future__ import annotations

import pytest
from evaluation_synthetic import SyntheticResults, fill_synthetic_warehouse

from models.warehouse import Warehouse


@pytest.fixture(scope="session")
def synthetic_results(tmp_path_factory: pytest.TempPathFactory) -> SyntheticResults:
    """A warehouse filled with synthetic runs, built once per test session and only read."""
    root = tmp_path_factory.mktemp("synthetic_warehouse")
    warehouse = Warehouse(root / "warehouse" / "promptlab.duckdb", root / "warehouse" / "predictions")
    return fill_synthetic_warehouse(warehouse)
