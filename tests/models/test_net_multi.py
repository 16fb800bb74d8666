"""MultimodalNet with M > 2 modalities: every path against the branch modules and the fusion head
called by hand (the rules are MultimodalNet's docstring)."""

import pytest
import torch

from pipelines.errors import CmiError
from pipelines.models import ModelConfig, build_model
from pipelines.models.heads import slot_name
from pipelines.shards import ModalitySpec

AUDIO = ModalitySpec("audio", "spectrogram", (16, 20), "float32")
TEXT = ModalitySpec("text", "embedding", (10,), "float32")
IMU = ModalitySpec("imu", "embedding", (6,), "float32")
SPECS = (AUDIO, TEXT, IMU)
MODS = ("audio", "text", "imu")
C = 4
D = 8

# rows: all three; audio+text; audio+imu; text+imu; audio only; text only; imu only; none; all three
PRESENT = {
    "audio": torch.tensor([1, 1, 1, 0, 1, 0, 0, 0, 1], dtype=torch.bool),
    "text": torch.tensor([1, 1, 0, 1, 0, 1, 0, 0, 1], dtype=torch.bool),
    "imu": torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool),
}
N = 9


def _inputs(specs, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {s.name: torch.randn((n, *s.shape), generator=g) for s in specs}


def _by_hand(net, x):
    """h, S h, I h of every modality on every row (eval mode: rows are independent)."""
    s, i = {}, {}
    for m in MODS:
        branch = net.branches[m]
        h = branch.encoder(x[m])
        s[m], i[m] = branch.self_projector(h), branch.infiltration_projector(h)
    return s, i


def _close(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
@pytest.mark.parametrize("missing_slot", ["infiltration", "zeros"])
def test_every_path_composes_the_modules_as_the_rules_say(fusion, missing_slot):
    net = build_model(SPECS, C, ModelConfig(embed_dim=D, fusion=fusion)).eval()
    net.missing_slot = missing_slot
    x = _inputs(SPECS, N)
    with torch.no_grad():
        out = net(x, PRESENT)
        s, i = _by_hand(net, x)
        F = net.fusion
        fill = (lambda t: torch.zeros_like(t)) if missing_slot == "zeros" else (lambda t: t)
        expected = {
            "fused": F(s["audio"], s["text"], s["imu"]),
            # only m present: m's infiltration feature fills every other slot
            "audio_only": F(s["audio"], fill(i["audio"]), fill(i["audio"])),
            "text_only": F(fill(i["text"]), s["text"], fill(i["text"])),
            "imu_only": F(fill(i["imu"]), fill(i["imu"]), s["imu"]),
            **{f"{m}_self": net.branches[m].classifier(s[m]) for m in MODS},
        }
        # two of three present: the missing slot takes the mean of the two infiltration features
        mean = {pair: fill((i[pair[0]] + i[pair[1]]) / 2) for pair in (("audio", "text"), ("audio", "imu"),
                                                                        ("text", "imu"))}
        routed = torch.stack([
            expected["fused"][0],
            F(s["audio"], s["text"], mean[("audio", "text")])[1],
            F(s["audio"], mean[("audio", "imu")], s["imu"])[2],
            F(mean[("text", "imu")], s["text"], s["imu"])[3],
            expected["audio_only"][4], expected["text_only"][5], expected["imu_only"][6],
            torch.zeros(C), expected["fused"][8],
        ])
    assert list(out.paths) == ["fused"] + [f"{m}_only" for m in MODS] + [f"{m}_self" for m in MODS]
    complete = PRESENT["audio"] & PRESENT["text"] & PRESENT["imu"]
    assert torch.equal(out.valid["fused"], complete)
    assert torch.equal(out.routed_valid, PRESENT["audio"] | PRESENT["text"] | PRESENT["imu"])
    for m in MODS:
        assert torch.equal(out.valid[f"{m}_only"], PRESENT[m]) and torch.equal(out.valid[f"{m}_self"], PRESENT[m])
    for name, logits in out.paths.items():
        rows = out.valid[name]
        assert _close(logits[rows], expected[name][rows]), name
        assert torch.all(logits[~rows] == 0), name
    assert _close(out.routed, routed)
    for m in MODS:
        rows = PRESENT[m]
        assert _close(out.infiltration_logits[m][rows], net.branches[m].classifier(i[m])[rows])
        assert _close(out.features[m][rows], s[m][rows]) and torch.all(out.features[m][~rows] == 0)


def test_the_fusion_heads_take_one_slot_per_modality():
    concat = build_model(SPECS, C, ModelConfig(embed_dim=D, fusion="concat"))
    assert concat.fusion.out.in_features == 3 * D
    summed = build_model(SPECS, C, ModelConfig(embed_dim=D, fusion="sum"))
    assert sorted(k for k in summed.state_dict() if k.startswith("fusion.")) == sorted(
        f"fusion.out_{s}.{p}" for s in "abc" for p in ("weight", "bias"))
    # two slots keep the two-modality keys
    two = build_model(SPECS[:2], C, ModelConfig(embed_dim=D, fusion="sum"))
    assert sorted(k for k in two.state_dict() if k.startswith("fusion.")) == sorted(
        f"fusion.out_{s}.{p}" for s in "ab" for p in ("weight", "bias"))
    assert [slot_name(k) for k in (0, 1, 2, 25, 26, 27, 51, 52)] == ["a", "b", "c", "z", "aa", "ab", "az", "ba"]
    # additive heads: the slots' shares sum to the logits
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, D, generator=g) for _ in MODS]
    with torch.no_grad():
        for net in (concat, summed):
            parts = net.fusion.slices(*xs)
            assert len(parts) == 3 and _close(sum(parts), net.fusion(*xs))
    with pytest.raises(ValueError, match="3 modality slots"):
        concat.fusion(*xs[:2])


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_film_and_gated_are_two_modality_heads(fusion):
    with pytest.raises(CmiError, match="concat, sum"):
        build_model(SPECS, C, ModelConfig(embed_dim=D, fusion=fusion))
    build_model(SPECS[:2], C, ModelConfig(embed_dim=D, fusion=fusion))      # two: as before


def test_parameter_groups_keep_their_names():
    net = build_model(SPECS, C, ModelConfig(embed_dim=D))
    groups = net.parameter_groups()
    assert set(groups) == {f"{m}.{part}" for m in MODS for part in ("encoder", "classifier")} | {"fusion"}
    assert sorted(k for keys in groups.values() for k in keys) == sorted(net.state_dict())
    assert all(".infiltration_projector." in k or ".self_projector." in k or ".encoder." in k
               for m in MODS for k in groups[f"{m}.encoder"])


def test_encoders_run_only_on_the_rows_with_their_modality():
    net = build_model(SPECS, C, ModelConfig(embed_dim=D)).train()
    seen = {}
    for m in MODS:
        net.branches[m].encoder.register_forward_pre_hook(lambda _, args, m=m: seen.__setitem__(m, args[0].shape[0]))
    present = dict(PRESENT, imu=torch.zeros(N, dtype=torch.bool))       # imu absent from the whole batch
    out = net(_inputs(SPECS, N), present)
    assert seen == {"audio": int(PRESENT["audio"].sum()), "text": int(PRESENT["text"].sum())}
    (out.routed.sum() + sum(out.self_logits[m].sum() for m in MODS)).backward()
    for name, p in net.named_parameters():
        if name.startswith("branches.imu."):
            assert p.grad is None, name
    assert net.fusion.out.weight.grad is not None


def test_with_one_modality_absent_everywhere_the_model_is_the_two_modality_model():
    """A three-modality concat model whose imu block of the head is zero, on rows without imu,
    computes the two-modality model with the same branches and the head's audio/text blocks: the
    row with audio and text is the two-modality fused path, a single-modality row its <m>_only."""
    three = build_model(SPECS, C, ModelConfig(embed_dim=D), seed=3).eval()
    two = build_model(SPECS[:2], C, ModelConfig(embed_dim=D), seed=5).eval()
    state = three.state_dict()
    state["fusion.out.weight"][:, 2 * D:] = 0
    three.load_state_dict(state)
    two.load_state_dict({k: (v[:, :2 * D] if k == "fusion.out.weight" else v) for k, v in state.items()
                         if not k.startswith("branches.imu.")})
    present = {"audio": torch.tensor([1, 1, 0, 1], dtype=torch.bool), "text": torch.tensor([1, 0, 1, 0], dtype=torch.bool),
               "imu": torch.zeros(4, dtype=torch.bool)}
    x = _inputs(SPECS, 4, seed=2)
    with torch.no_grad():
        o3, o2 = three(x, present), two(x, present)
    assert _close(o3.routed, o2.routed) and torch.equal(o3.routed_valid, o2.routed_valid)
    assert not o3.valid["fused"].any() and o2.valid["fused"][0]
    for p in ("audio_only", "text_only", "audio_self", "text_self"):
        assert _close(o3.paths[p], o2.paths[p]), p


def test_one_modality_models_are_unchanged():
    net = build_model((IMU,), C, ModelConfig(embed_dim=D))
    assert net.fusion is None and net.branches["imu"].infiltration_projector is None
    out = net(_inputs((IMU,), 3), {"imu": torch.tensor([True, False, True])})
    assert list(out.paths) == ["imu_self"] and out.infiltration_logits == {}


def test_distinct_names_are_still_required():
    with pytest.raises(CmiError, match="distinct"):
        build_model((AUDIO, TEXT, ModalitySpec("text", "embedding", (3,), "float32")), C)


def test_three_modality_models_are_deterministic():
    a, b = (build_model(SPECS, C, ModelConfig(embed_dim=D), seed=11) for _ in range(2))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = _inputs(SPECS, N)
    with torch.no_grad():
        o1, o2 = a.eval()(x, PRESENT), b.eval()(x, PRESENT)
    assert torch.equal(o1.routed, o2.routed) and all(torch.equal(o1.paths[p], o2.paths[p]) for p in o1.paths)


def test_evaluation_of_a_three_modality_model():
    """Every path is predicted; the imbalance ratio (a ratio of two modalities) is None; the best
    round is picked on ``fused``."""
    from pipelines.fl import TrainPool
    from pipelines.training.evaluation import predict, selection_path, split_metrics

    net = build_model(SPECS, C, ModelConfig(embed_dim=D))
    pool = TrainPool(inputs=_inputs(SPECS, N), present=PRESENT, labels=torch.arange(N) % C)
    paths = ["fused"] + [f"{m}_only" for m in MODS] + [f"{m}_self" for m in MODS]
    pred = predict(net, pool, paths, list(MODS), batch_size=4)
    with torch.no_grad():
        out = net.eval()(pool.inputs, pool.present)
    for p in paths:
        assert pred.paths[p].tolist() == torch.where(out.valid[p], out.paths[p].argmax(1), -1).tolist(), p
    assert pred.routed.tolist() == torch.where(out.routed_valid, out.routed.argmax(1), -1).tolist()
    assert pred.self_logits is None
    metrics = split_metrics(pred, C)
    assert metrics["imbalance_ratio"] is None and set(metrics["accuracy"]) == set(paths)
    assert selection_path(MODS) == "fused" and selection_path(MODS[:2]) == "fused"
    assert selection_path(MODS[:1]) == "audio_self"
