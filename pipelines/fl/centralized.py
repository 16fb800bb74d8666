"""Centralized training: the upper reference."""

from pipelines.fl.base import FedAvg


class Centralized(FedAvg):
    """Pooled data, same model and objective as FedAvg: the engine hands one ClientData holding
    every training index each round (``pooled = True``), so a round is ``local_epochs`` epochs of
    plain SGD over the whole training set, and ``aggregate`` returns that client's state."""

    name = "centralized"
    pooled = True
