"""MLflow at the edge: the tracking store, per-run and per-iteration logging, the model registry."""
