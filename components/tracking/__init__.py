"""MLflow tracking shared by the sweeps of ``mass_fewshot`` and ``mass_probe``: the store, run identity, summaries."""
