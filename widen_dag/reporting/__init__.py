"""Reporting helpers shared by workers and assets: plots and Markdown (no Dagster)."""
