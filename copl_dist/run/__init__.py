"""One run: the plan (every check, once), the iteration driver, saved state, outputs, plots, prediction."""
