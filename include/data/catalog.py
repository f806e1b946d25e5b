"""The data catalog of the configured backend - the one place that chooses it (``local``: DuckDB,
``catalog_duckdb.py``; ``aws``: Glue + Athena, ``catalog_glue.py``, imported only on that
backend). The interface, the layout and the shared checks are ``catalog_base.py``."""
from __future__ import annotations

from include.common.config import Settings, get_settings
from include.data.catalog_base import Catalog
from include.data.catalog_duckdb import DuckDbCatalog


def get_catalog(settings: Settings | None = None) -> Catalog:
    """The catalog of the configured backend."""
    settings = settings or get_settings()
    if settings.backend == "aws":
        from include.data.catalog_glue import GlueCatalog

        return GlueCatalog(settings)
    return DuckDbCatalog(settings)
