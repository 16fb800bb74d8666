"""Experiments: methods x seeds x a grid of settings x partitions, each cell a normal run.

:mod:`~pipelines.experiments.spec` reads an experiment file (or options) and expands it into
cells, :mod:`~pipelines.experiments.runner` runs them in worker processes that split the cores,
:mod:`~pipelines.experiments.record` is the experiment artifact (:func:`load_experiment`), and
:mod:`~pipelines.experiments.runs` lists run directories (`cmi runs`). Importing this package
does not import torch.
"""

from pipelines.experiments.record import Cell, Experiment, load_experiment

__all__ = ["Cell", "Experiment", "load_experiment"]
