"""Data products from the search trees: the dbt-like SQL models over DuckDB and token lengths."""
