"""One FedAvg round over three clients against the same round written out by hand: plain torch
SGD over the same mini-batches in the same order, the shared objective spelled out per path, and
the sample-weighted average spelled out per parameter group."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.fl import FedAvg, FedAvgHparams, TrainConfig
from tests.fl.common import CPU, client, factory, make_pool

TRAIN = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, local_epochs=2, batch_size=5)
AUX = 1.5                                        # λ1
# client -> (pool rows, modalities, seed): two multimodal clients whose samples may lack one
# modality, and an audio-only client; all of different sizes
CLIENTS = {0: (np.arange(0, 16), ("audio", "visual"), 11),
           1: (np.arange(26, 15, -1), ("audio", "visual"), 12),     # rows 26..16, listed backwards
           2: (np.arange(27, 36), ("audio",), 13)}
SIZES = {0: 16, 1: 11, 2: 9}
# state_dict key prefix -> parameter group (first match), and the clients that train each group:
# the audio-only client never reaches C_audio (its path is F(S_a h_a, I_a h_a)) nor anything visual
GROUP_OF_PREFIX = (("branches.audio.classifier.", "audio.classifier"),
                   ("branches.visual.classifier.", "visual.classifier"),
                   ("branches.audio.", "audio.encoder"), ("branches.visual.", "visual.encoder"), ("fusion.", "fusion"))
TRAINED_BY = {"audio.encoder": (0, 1, 2), "audio.classifier": (0, 1), "visual.encoder": (0, 1),
              "visual.classifier": (0, 1), "fusion": (0, 1, 2)}


def pool():
    p = make_pool(36, seed=5, missing=0.3)
    p.present["audio"][27:] = True              # client 2's rows: audio only
    p.present["visual"][27:] = False
    return p


def hand_client(start, data, rows: np.ndarray, seed: int):
    """Local training written out: SGD with TrainConfig's momentum and weight decay; each epoch a
    permutation of ``rows`` from one generator seeded with ``seed``, cut into batches; the loss is
    (Σ CE(fused) + λ1·Σ [CE(self_audio) + CE(self_visual)] on rows with both modalities
    + Σ CE(<m>_only) on rows with only m) / batch size. A term without rows is left out of the
    graph, so parameters only it would reach get no gradient and SGD skips them."""
    model = factory()()
    model.load_state_dict(start)
    model.train()
    sgd = torch.optim.SGD(model.parameters(), lr=TRAIN.lr, momentum=TRAIN.momentum, weight_decay=TRAIN.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.as_tensor(rows)
    for _ in range(TRAIN.local_epochs):
        for batch in rows[torch.randperm(rows.shape[0], generator=generator)].split(TRAIN.batch_size):
            a, v = data.present["audio"][batch], data.present["visual"][batch]
            y = data.labels[batch]
            out = model({m: x[batch] for m, x in data.inputs.items()}, {"audio": a, "visual": v})
            terms = [(out.paths["fused"], a & v, 1.0), (out.self_logits["audio"], a & v, AUX),
                     (out.self_logits["visual"], a & v, AUX), (out.paths["audio_only"], a & ~v, 1.0),
                     (out.paths["visual_only"], v & ~a, 1.0)]
            loss = sum(w * F.cross_entropy(logits[rows_], y[rows_], reduction="sum")
                       for logits, rows_, w in terms if rows_.any()) / batch.shape[0]
            sgd.zero_grad()
            loss.backward()
            sgd.step()
    return model.state_dict()


def test_a_fedavg_round_equals_the_hand_written_loop_and_group_wise_average():
    fedavg = FedAvg(factory(), TRAIN, FedAvgHparams(aux_weight=AUX), CPU)
    start = factory()().state_dict()
    data = pool()
    assert 0 < int((data.present["audio"] & data.present["visual"])[:27].sum()) < 27    # mixed batches
    updates = [fedavg.client_update(start, data, client(rows, mods, cid), round_idx=0, seed=seed)
               for cid, (rows, mods, seed) in CLIENTS.items()]
    new_global = fedavg.aggregate(start, updates)

    hand = {cid: hand_client(start, data, rows, seed) for cid, (rows, _, seed) in CLIENTS.items()}
    assert [u.num_samples for u in updates] == [SIZES[c] for c in CLIENTS]
    assert [u.trained_groups for u in updates] == [{g for g, by in TRAINED_BY.items() if c in by} for c in CLIENTS]
    for key, value in start.items():
        group = next(g for prefix, g in GROUP_OF_PREFIX if key.startswith(prefix))
        by = TRAINED_BY[group]
        average = sum(SIZES[c] * hand[c][key].double() for c in by) / sum(SIZES[c] for c in by)
        got = new_global[key]
        assert got.dtype == value.dtype, key
        if value.dtype.is_floating_point:
            assert torch.allclose(got.double(), average, rtol=0, atol=1e-6), key
        else:                                   # BatchNorm's num_batches_tracked: rounded mean
            assert torch.equal(got, average.round().to(value.dtype)), key
    moved = [k for k in start if start[k].is_floating_point() and not torch.equal(start[k], new_global[k])]
    assert {next(g for prefix, g in GROUP_OF_PREFIX if k.startswith(prefix)) for k in moved} == set(TRAINED_BY)
