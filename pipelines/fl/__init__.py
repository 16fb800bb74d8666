"""Federated methods: FedAvg (the base, with group-wise aggregation) and its subclasses, one
module each.

Every method is a subclass of :class:`FedAvg` exposing ``name``, ``Hparams`` (a frozen dataclass
of its hyperparameters, declared in its module: ``--set <name>.<field>``), ``federated``,
``pooled``, ``select_specs``, and the round protocol ``plan_round`` / ``broadcast`` /
``client_update`` / ``server_update``; a new method overrides the few hooks it needs (see
:class:`FedAvg`): FedProx one client hook, PMR two, CMSFed the server's plan and state. Register
it in :data:`METHODS`."""

from pipelines.errors import CmiError
from pipelines.fl.base import (
    Batch,
    ClientData,
    ClientTask,
    ClientUpdate,
    FedAvg,
    FedAvgHparams,
    RoundContext,
    ServerState,
    TrainConfig,
    TrainPool,
    average_groups,
    sample_clients,
)
from pipelines.fl.agm import AGM, AGMHparams
from pipelines.fl.arm import ARM, ARMHparams
from pipelines.fl.aug import AUG, AUGHparams
from pipelines.fl.centralized import Centralized
from pipelines.fl.cmsfed import CMSFed, CMSFedHparams
from pipelines.fl.fedcmi import FedCMI, FedCMIHparams
from pipelines.fl.fedprox import FedProx, FedProxHparams
from pipelines.fl.local import Local
from pipelines.fl.mmpareto import MMPareto, MMParetoHparams
from pipelines.fl.mnl import MNL, MNLHparams
from pipelines.fl.ogm_ge import OGMGE, OGMGEHparams
from pipelines.fl.pmr import PMR, PMRHparams
from pipelines.fl.remix import Remix, RemixHparams
from pipelines.fl.unimodal import Unimodal, UnimodalHparams

METHODS: dict[str, type[FedAvg]] = {cls.name: cls for cls in (
    FedAvg, FedProx, FedCMI, CMSFed, PMR, OGMGE, AUG, MNL, Remix, ARM, AGM, MMPareto, Unimodal, Centralized, Local)}


def get_method(name: str) -> type[FedAvg]:
    """The method class registered under ``name``."""
    if name not in METHODS:
        raise CmiError(f"unknown method {name!r}; choose one of {', '.join(METHODS)} (--method).")
    return METHODS[name]


__all__ = [
    "AGM", "AGMHparams", "ARM", "ARMHparams", "AUG", "AUGHparams", "MMPareto", "MMParetoHparams", "MNL",
    "MNLHparams", "Remix", "RemixHparams", "CMSFed", "CMSFedHparams", "METHODS", "OGMGE", "OGMGEHparams", "PMR", "PMRHparams",
    "Batch", "Centralized", "ClientData", "ClientTask", "ClientUpdate", "FedAvg", "FedAvgHparams", "FedCMI",
    "FedCMIHparams", "FedProx", "FedProxHparams", "Local", "RoundContext", "ServerState", "TrainConfig",
    "TrainPool", "Unimodal", "UnimodalHparams", "average_groups", "get_method", "sample_clients",
]
