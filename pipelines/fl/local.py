"""Local training without federation: the lower reference."""

from __future__ import annotations

from pipelines.fl.base import ClientData, ClientUpdate, FedAvg, State, TrainPool


class Local(FedAvg):
    """Each client trains its own persistent model on its own data; nothing is shared.

    ``federated = False``. A client's model starts from the initial global model on its first
    participation (``client_state=None``) and from its ``client_state`` afterwards; the update's
    ``client_state`` is its trained model on the CPU whatever the training device (the engine keeps
    and checkpoints one per client, so device memory does not grow with the clients; the update's
    ``state`` is the same CPU copy), passed back the next time the client is sampled. The
    optimizer (momentum) restarts every round, as for every method. ``aggregate`` returns the
    global state unchanged: the global model stays the initial one and is not a result.

    Evaluation (engine): every client's own model (its last ``client_state``, or the initial global
    model for a client never sampled) on the test set — one prediction row per (client model, test
    sample), the ``model`` column of the predictions file — and accuracy as the mean / std / worst
    10% over client models; each client model on its own training data for per-client fairness.
    """

    name = "local"
    federated = False
    client_state_is_model = True

    def client_update(self, global_state: State, pool: TrainPool, client: ClientData, round_idx: int, seed: int,
                      client_state: State | None = None, **plan) -> ClientUpdate:
        update = super().client_update(global_state, pool, client, round_idx, seed, client_state, **plan)
        if update.num_samples:
            update.state = update.client_state = {k: v.cpu() for k, v in update.state.items()}
        return update

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> State:
        return dict(global_state)
