"""Reads the declarative catalog (assets_catalog/*.yaml): datasets, backbones, methods and experiment grids.

The catalog is data; this package only parses and validates it, and expands grids into experiment configurations
with stable keys. Errors name the file and the entry. One module per part of the catalog: `datasets`, `backbones`,
`world` (world.yaml), `grid` (methods.yaml and the grid of experiments.yaml), `grid_subsets` (grids.yaml),
`transfer`, `testtime` and `learning_settings` (the other sections of experiments.yaml; `testtime_settings` holds
the test-time modes' settings and published defaults), `published` (published_results.yaml: the papers' numbers the
report compares with), `suites` (where a catalog's files are), `validation` and
`limits` (how a file is read and a field checked), and `loader`, which assembles them into a `Catalog`. The names
other modules use are re-exported here. The catalog imports nothing from models/testtime, which imports it.
"""

from models.catalog.backbones import BackboneEntry, DiffusionBackboneEntry
from models.catalog.datasets import DatasetEntry
from models.catalog.grid import AugmentationOptions, ExperimentConfig, PseudolabelOptions
from models.catalog.grid_subsets import DEFAULT_GRID, grid_subset_names
from models.catalog.learning_settings import LearningSettingsPlan
from models.catalog.loader import EVALUATION_PROTOCOLS, Catalog, load_catalog
from models.catalog.suites import DEFAULT_CATALOG_DIR, SuiteInfo, suite_names
from models.catalog.transfer import TransferPlan
from models.catalog.validation import CatalogError
from models.catalog.world import parse_world

__all__ = [
    "DEFAULT_CATALOG_DIR", "DEFAULT_GRID", "EVALUATION_PROTOCOLS", "AugmentationOptions", "BackboneEntry", "Catalog",
    "CatalogError", "DatasetEntry", "DiffusionBackboneEntry", "ExperimentConfig", "LearningSettingsPlan",
    "PseudolabelOptions", "SuiteInfo", "TransferPlan", "grid_subset_names", "load_catalog", "parse_world",
    "suite_names",
]
