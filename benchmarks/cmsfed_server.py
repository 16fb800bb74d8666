"""CMSFed's server at scale: memory of its state and time of its round plan and server update
for many clients, on the CREMA-D-sized model (run by hand; prints figures, asserts nothing).

The server keeps per client a count-sketch of its encoder deltas (``cmsfed.sketch_dim`` buckets,
3 of them) instead of the deltas themselves, plus three K×K distance matrices, so its state is
O(K·sketch_dim + K²) floats whatever the model's size. Client updates are simulated: the global
weights plus seeded noise, with the payload a real client sends (prototypes and counts).

    python benchmarks/cmsfed_server.py                       # 1,000 clients, 10 per round
    python benchmarks/cmsfed_server.py --clients 5000 --per-round 50 --encoder resnet18 --embed-dim 512
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from workload import CLASSES, SPECS  # also puts the checkout on sys.path

from pipelines.fl import ClientData, ClientUpdate, CMSFed, CMSFedHparams, TrainConfig  # noqa: E402
from pipelines.models import ModelConfig, build_model  # noqa: E402


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def fake_update(cms: CMSFed, global_state, cid: int, generator: torch.Generator) -> ClientUpdate:
    state = {k: v + 1e-3 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in global_state.items()}
    m, c, d = len(cms.modalities), len(CLASSES), cms.embed_dim
    payload = {"prototypes": torch.randn((m, c, d), generator=generator), "prototype_counts": torch.full((m, c), 5.0),
               "class_counts": torch.full((c,), 5.0)}
    return ClientUpdate(cid, 30, state, {f"{mod}.encoder" for mod in cms.modalities} | {"fusion"},
                        {"loss": 1.0, "rho": float(1 + torch.rand((), generator=generator))}, payload=payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sketch-dim", type=int, default=CMSFedHparams.sketch_dim)
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--embed-dim", type=int, default=128)
    args = parser.parse_args()

    config = ModelConfig(encoder=args.encoder, embed_dim=args.embed_dim)
    cms = CMSFed(lambda: build_model(SPECS, len(CLASSES), config), TrainConfig(),
                 CMSFedHparams(sketch_dim=args.sketch_dim), torch.device("cpu"))
    global_state = cms.model_factory().state_dict()
    params = sum(p.numel() for p in cms.model.parameters())
    clients = [ClientData(cid, np.arange(1), tuple(cms.modalities)) for cid in range(args.clients)]
    state = cms.init_server_state(args.clients, len(CLASSES))
    generator = torch.Generator().manual_seed(0)
    print(f"model: {params / 1e6:.2f} M parameters ({params * 4 / 1e6:.1f} MB as float32); {args.clients} clients, "
          f"{args.per_round} per round, sketch_dim {args.sketch_dim}")

    # round 0 trains every client: fill the state in chunks of per_round updates
    started = time.perf_counter()
    for first in range(0, args.clients, args.per_round):
        updates = [fake_update(cms, global_state, cid, generator)
                   for cid in range(first, min(first + args.per_round, args.clients))]
        _, state = cms.server_update(global_state, state, updates, 0)
    fill = time.perf_counter() - started
    dense = args.clients * 3 * params * 4
    print(f"server state: {state_bytes(state) / 1e6:.1f} MB "
          f"({', '.join(f'{k} {state_bytes({k: v}) / 1e6:.1f}' for k, v in state.items())}); dense float32 deltas "
          f"would take {dense / 1e9:.1f} GB; round-0 fill {fill:.1f} s ({1e3 * fill / args.clients:.1f} ms per client)")
    for round_idx in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        plan = cms.plan_round(round_idx, clients, args.per_round, 0, state)
        t1 = time.perf_counter()
        updates = [fake_update(cms, global_state, task.cid, generator) for task in plan]
        t2 = time.perf_counter()
        _, state = cms.server_update(global_state, state, updates, round_idx)
        t3 = time.perf_counter()
        weak = sum(task.modalities is not None for task in plan)
        print(f"round {round_idx}: plan {1e3 * (t1 - t0):.0f} ms ({weak} weak-only), server update "
              f"{1e3 * (t3 - t2):.0f} ms for {len(updates)} updates")


if __name__ == "__main__":
    main()
