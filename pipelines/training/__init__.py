"""`cmi train`: configuration, data loading, the round pieces shared by the engines, evaluation,
and the run directory (metrics, predictions, checkpoints). Engines live in :mod:`pipelines.engines`."""
