"""Federated methods: FedAvg (the base, with group-wise aggregation) and its subclasses.

Every method exposes ``name``, ``Hparams`` (a dataclass of its hyperparameters), ``federated``,
``pooled``, ``select_specs``, ``client_update`` and ``aggregate``; see :class:`FedAvg`."""

from pipelines.errors import CmiError
from pipelines.fl.base import (
    Batch,
    ClientData,
    ClientUpdate,
    FedAvg,
    FedAvgHparams,
    RoundContext,
    TrainConfig,
    TrainPool,
    average_groups,
)
from pipelines.fl.centralized import Centralized
from pipelines.fl.fedcmi import FedCMI, FedCMIHparams
from pipelines.fl.fedprox import FedProx, FedProxHparams
from pipelines.fl.local import Local
from pipelines.fl.unimodal import Unimodal, UnimodalHparams

METHODS: dict[str, type[FedAvg]] = {cls.name: cls for cls in (FedAvg, FedProx, FedCMI, Unimodal, Centralized, Local)}


def get_method(name: str) -> type[FedAvg]:
    """The method class registered under ``name``."""
    if name not in METHODS:
        raise CmiError(f"unknown method {name!r}; choose one of {', '.join(METHODS)} (--method).")
    return METHODS[name]


__all__ = [
    "METHODS", "Batch", "Centralized", "ClientData", "ClientUpdate", "FedAvg", "FedAvgHparams", "FedCMI",
    "FedCMIHparams", "FedProx", "FedProxHparams", "Local", "RoundContext", "TrainConfig", "TrainPool",
    "Unimodal", "UnimodalHparams", "average_groups", "get_method",
]
