"""Ray Tune: search spaces, label-free objectives, post-processing on cached predictions, the trial log."""
