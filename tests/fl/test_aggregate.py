import pytest
import torch

from pipelines.fl import ClientUpdate, FedAvg, TrainConfig, average_groups
from pipelines.models import ModelConfig, build_model
from pipelines.shards import ModalitySpec
from tests.fl.common import CPU, assert_states_equal, client, initial_state, make_pool, method, only

# audio has BatchNorm buffers (an integer num_batches_tracked among them), text has none
AGG_SPECS = [ModalitySpec("audio", "spectrogram", (4, 4), "float32"), ModalitySpec("text", "embedding", (3,), "float32")]
ALL = {"audio.encoder", "audio.classifier", "text.encoder", "text.classifier", "fusion"}


def _fedavg():
    return FedAvg(lambda: build_model(AGG_SPECS, 2, ModelConfig(embed_dim=2)), TrainConfig(), FedAvg.Hparams(), CPU)


def _filled(state, value, tracked):
    return {k: torch.full_like(v, tracked if k.endswith("num_batches_tracked") else value) for k, v in state.items()}


def _group_values(state, groups):
    """The single value every tensor of each group holds (asserting it is uniform)."""
    values = {}
    for group, keys in groups.items():
        flat = torch.cat([state[k].double().flatten() for k in keys])
        assert torch.all(flat == flat[0]), group
        values[group] = float(flat[0])
    return values


def test_groups_are_averaged_over_the_clients_that_trained_them():
    fedavg = _fedavg()
    zero = _filled(initial_state(fedavg), 0.0, 0)
    updates = [
        ClientUpdate(1, 10, _filled(zero, 1.0, 4), set(ALL), {"loss": 0.0}),                            # multimodal
        ClientUpdate(2, 30, _filled(zero, 3.0, 7), {"audio.encoder", "fusion"}, {"loss": 0.0}),          # audio only
        ClientUpdate(3, 20, _filled(zero, 5.0, 2), {"text.encoder", "fusion"}, {"loss": 0.0}),           # text only
    ]
    new = fedavg.aggregate(zero, updates)
    groups = {g: [k for k in keys if not k.endswith("num_batches_tracked")] for g, keys in fedavg.groups.items()}
    assert _group_values(new, groups) == pytest.approx({      # float32 results: 1e-7 relative
        "audio.encoder": (10 * 1 + 30 * 3) / 40,            # 2.5
        "audio.classifier": 1.0,                            # only the multimodal client trained C_audio
        "text.encoder": (10 * 1 + 20 * 5) / 30,             # 3.666...
        "text.classifier": 1.0,
        "fusion": (10 * 1 + 30 * 3 + 20 * 5) / 60,          # 3.333...
    }, rel=1e-7)
    tracked = [k for k in new if k.endswith("num_batches_tracked")]
    assert tracked
    for k in tracked:                                        # (10*4 + 30*7) / 40 = 6.25 -> 6, still int64
        assert new[k].dtype == torch.int64 and int(new[k]) == 6
    assert new["fusion.out.weight"].dtype == torch.float32


def test_a_group_nobody_trained_keeps_the_global_values_and_inputs_are_not_modified():
    fedavg = _fedavg()
    start = initial_state(fedavg)
    snapshot = {k: v.clone() for k, v in start.items()}
    audio_only = ClientUpdate(2, 30, _filled(start, 3.0, 7), {"audio.encoder", "fusion"}, {"loss": 0.0})
    idle = ClientUpdate(4, 0, _filled(start, 9.0, 9), set(ALL), {"loss": 0.0})      # no samples: no weight
    new = fedavg.aggregate(start, [audio_only, idle])
    untouched = [k for g in ("audio.classifier", "text.encoder", "text.classifier") for k in fedavg.groups[g]]
    assert_states_equal(new, snapshot, untouched)
    assert all(torch.all(new[k] == (7 if k.endswith("tracked") else 3.0)) for k in fedavg.groups["audio.encoder"])
    assert_states_equal(start, snapshot)
    assert average_groups(start, [], fedavg.groups) == start


def test_unimodal_clients_leave_the_other_modality_exactly_untouched():
    fedavg = method(FedAvg)
    start = initial_state(fedavg)
    pool = make_pool(24)
    updates = [fedavg.client_update(start, only(pool, "audio"), client(range(0, 12), ("audio",), cid=1), 0, seed=1),
               fedavg.client_update(start, only(pool, "visual"), client(range(12, 24), ("visual",), cid=2), 0, seed=2)]
    assert updates[0].trained_groups == {"audio.encoder", "fusion"}
    assert updates[1].trained_groups == {"visual.encoder", "fusion"}
    # the audio-only client's state never touched anything of visual, nor audio's classifier
    assert_states_equal(updates[0].state, start, fedavg.groups["visual.encoder"] + fedavg.groups["visual.classifier"]
                        + fedavg.groups["audio.classifier"])
    new = fedavg.aggregate(start, updates[:1])
    assert_states_equal(new, start, [k for g in ("visual.encoder", "visual.classifier", "audio.classifier")
                                     for k in fedavg.groups[g]])
    assert_states_equal(new, updates[0].state, fedavg.groups["audio.encoder"] + fedavg.groups["fusion"])
    assert not torch.equal(new["branches.audio.encoder.cnn.0.0.weight"], start["branches.audio.encoder.cnn.0.0.weight"])
    # both: each encoder group comes from its own client, fusion is their 12/12 average
    both = fedavg.aggregate(start, updates)
    assert_states_equal(both, updates[1].state, fedavg.groups["visual.encoder"])
    w0, w1 = (u.state["fusion.out.weight"].double() for u in updates)
    assert torch.allclose(both["fusion.out.weight"].double(), (w0 + w1) / 2, atol=1e-7)
