"""The data concern: landing, the catalog (DuckDB), the quality gate, the feature store and the
synthetic generator."""
