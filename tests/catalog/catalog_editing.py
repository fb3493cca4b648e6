"""Editing a throwaway copy of the default catalog, for the catalog tests."""

import shutil
from pathlib import Path

import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR


@pytest.fixture
def catalog_copy(tmp_path) -> Path:
    directory = tmp_path / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, directory)
    return directory


def edit(path: Path, change) -> None:
    content = yaml.safe_load(path.read_text())
    change(content)
    path.write_text(yaml.safe_dump(content))
