"""Where data and artifacts live: the lake (Parquet tables, staged folders) and model locations."""
