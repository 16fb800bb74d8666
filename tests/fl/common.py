"""Tiny pools, models and method instances for the method tests."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.fl import ClientData, TrainConfig, TrainPool
from pipelines.models import ModelConfig, build_model
from pipelines.shards import ModalitySpec

SPECS = [ModalitySpec("audio", "spectrogram", (8, 12), "float32"), ModalitySpec("visual", "frames", (2, 8, 8, 3), "uint8")]
NUM_CLASSES = 3
CPU = torch.device("cpu")


def factory(specs=SPECS, num_classes: int = NUM_CLASSES, embed_dim: int = 8):
    return lambda: build_model(specs, num_classes, ModelConfig(embed_dim=embed_dim))


def make_pool(n: int = 48, seed: int = 0, missing: float = 0.0, specs=SPECS, num_classes: int = NUM_CLASSES) -> TrainPool:
    """Random payloads; with ``missing`` > 0 each row lacks one modality (chosen at random) with that
    probability, so every row keeps at least one."""
    g = torch.Generator().manual_seed(seed)
    inputs = {}
    for spec in specs:
        if spec.dtype == "uint8":
            inputs[spec.name] = torch.randint(0, 256, (n, *spec.shape), generator=g, dtype=torch.uint8)
        else:
            inputs[spec.name] = torch.randn((n, *spec.shape), generator=g)
    drop = torch.rand(n, generator=g) < missing
    which = torch.randint(0, len(specs), (n,), generator=g)
    present = {spec.name: ~(drop & (which == k)) for k, spec in enumerate(specs)}
    labels = torch.arange(n) % num_classes
    return TrainPool(inputs=inputs, present=present, labels=labels)


def client(indices, modalities=("audio", "visual"), cid: int = 0) -> ClientData:
    return ClientData(cid=cid, indices=np.asarray(indices, dtype=np.int64), modalities=tuple(modalities))


def only(pool: TrainPool, modality: str) -> TrainPool:
    """The same pool with every other modality absent on every row."""
    present = {m: (p if m == modality else torch.zeros_like(p)) for m, p in pool.present.items()}
    return TrainPool(inputs=pool.inputs, present=present, labels=pool.labels)


def method(cls, hparams=None, train: TrainConfig = TrainConfig(batch_size=8), specs=SPECS):
    hparams = hparams if hparams is not None else cls.Hparams()
    return cls(factory(cls.select_specs(specs, hparams)), train, hparams, CPU)


def initial_state(m) -> dict[str, torch.Tensor]:
    return m.model_factory().state_dict()


def assert_states_equal(s1, s2, keys=None) -> None:
    for k in keys if keys is not None else s1:
        assert torch.equal(s1[k], s2[k]), k
