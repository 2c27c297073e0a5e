"""Ready pipelines: TOML files and the model factories they name."""
