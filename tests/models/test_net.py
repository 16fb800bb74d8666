import pytest
import torch

from pipelines.errors import CmiError
from pipelines.models import FUSIONS, ModelConfig, build_model
from pipelines.shards import ModalitySpec

SPEC = ModalitySpec("audio", "spectrogram", (16, 20), "float32")
FRAMES = ModalitySpec("visual", "frames", (2, 16, 16, 3), "uint8")
IMAGE = ModalitySpec("image", "image", (16, 16, 3), "uint8")
TEXT = ModalitySpec("text", "embedding", (10,), "float32")
C = 4


def _inputs(specs, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {s.name: (torch.randint(0, 256, (n, *s.shape), generator=g, dtype=torch.uint8) if s.dtype == "uint8"
                     else torch.randn((n, *s.shape), generator=g)) for s in specs}


# rows: both, both, A only, B only, neither, both
PRESENT_A = torch.tensor([True, True, True, False, False, True])
PRESENT_B = torch.tensor([True, True, False, True, False, True])


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("specs,projector", [((SPEC, FRAMES), "linear"), ((IMAGE, TEXT), "mlp")])
def test_forward_paths_on_a_mixed_presence_batch(fusion, specs, projector):
    net = build_model(specs, C, ModelConfig(embed_dim=8, fusion=fusion, projector=projector)).train()
    a, b = net.modalities
    out = net(_inputs(specs, 6), {a: PRESENT_A, b: PRESENT_B})
    assert list(out.paths) == ["fused", f"{a}_only", f"{b}_only", f"{a}_self", f"{b}_self"]
    for name, logits in out.paths.items():
        assert logits.shape == (6, C)
        assert torch.isfinite(logits).all()
        assert torch.all(logits[~out.valid[name]] == 0)
    both, only_a, only_b = PRESENT_A & PRESENT_B, PRESENT_A & ~PRESENT_B, PRESENT_B & ~PRESENT_A
    assert torch.equal(out.valid["fused"], both)
    assert torch.equal(out.valid[f"{a}_only"], PRESENT_A) and torch.equal(out.valid[f"{b}_self"], PRESENT_B)
    assert torch.equal(out.routed_valid, PRESENT_A | PRESENT_B)
    assert torch.equal(out.routed[both], out.paths["fused"][both])
    assert torch.equal(out.routed[only_a], out.paths[f"{a}_only"][only_a])
    assert torch.equal(out.routed[only_b], out.paths[f"{b}_only"][only_b])
    assert torch.all(out.routed[4] == 0)
    assert out.infiltration_logits[a].shape == out.infiltration_logits[b].shape == (6, C)


def test_paths_compose_the_modules_as_the_spec_says():
    net = build_model((SPEC, TEXT), C, ModelConfig(embed_dim=8)).eval()
    x = _inputs((SPEC, TEXT), 6)
    with torch.no_grad():
        out = net(x, {"audio": PRESENT_A, "text": PRESENT_B})
        A, B = net.branches["audio"], net.branches["text"]
        h_a, h_b = A.encoder(x["audio"]), B.encoder(x["text"])
        s_a, i_a, s_b, i_b = A.self_projector(h_a), A.infiltration_projector(h_a), B.self_projector(h_b), B.infiltration_projector(h_b)
        expected = {
            "fused": net.fusion(s_a, s_b),
            "audio_only": net.fusion(s_a, i_a),        # A's infiltration feature fills B's slot
            "text_only": net.fusion(i_b, s_b),         # B's infiltration feature fills A's slot
            "audio_self": A.classifier(s_a),
            "text_self": B.classifier(s_b),
        }
    for name, logits in expected.items():
        rows = out.valid[name]
        assert torch.allclose(out.paths[name][rows], logits[rows], atol=1e-5), name
    assert torch.allclose(out.infiltration_logits["audio"][PRESENT_A], A.classifier(i_a)[PRESENT_A], atol=1e-5)


def test_encoders_see_only_rows_that_have_their_modality():
    net = build_model((SPEC, TEXT), C, ModelConfig(embed_dim=8)).eval()
    x = _inputs((SPEC, TEXT), 6)
    x["audio"][~PRESENT_A] = float("nan")      # garbage where absent must not leak anywhere
    x["text"][~PRESENT_B] = float("nan")
    with torch.no_grad():
        out = net(x, {"audio": PRESENT_A, "text": PRESENT_B})
        alone = net({m: v[:1] for m, v in x.items()}, {"audio": PRESENT_A[:1], "text": PRESENT_B[:1]})
    assert all(torch.isfinite(t).all() for t in out.paths.values())
    assert torch.allclose(out.paths["fused"][:1], alone.paths["fused"], atol=1e-5)


def test_resnet18_forward_on_a_tiny_input():
    specs = (ModalitySpec("audio", "spectrogram", (32, 24), "float32"), ModalitySpec("visual", "frames", (2, 32, 32, 3), "uint8"))
    net = build_model(specs, C, ModelConfig(encoder="resnet18", embed_dim=16)).train()
    out = net(_inputs(specs, 3), {"audio": torch.tensor([True, True, False]), "visual": torch.tensor([True, False, True])})
    assert out.routed.shape == (3, C) and torch.isfinite(out.routed).all()


def test_one_modality_model_has_only_its_self_path():
    net = build_model((FRAMES,), C, ModelConfig(embed_dim=8))
    assert net.modalities == ("visual",) and net.fusion is None
    assert set(net.parameter_groups()) == {"visual.encoder", "visual.classifier"}
    present = torch.tensor([True, False, True])
    out = net(_inputs((FRAMES,), 3), {"visual": present})
    assert list(out.paths) == ["visual_self"] and out.infiltration_logits == {}
    assert torch.equal(out.routed, out.paths["visual_self"]) and torch.equal(out.valid["visual_self"], present)


def test_parameter_groups_partition_the_state_dict():
    net = build_model((SPEC, FRAMES), C, ModelConfig(embed_dim=8))
    groups = net.parameter_groups()
    assert set(groups) == {"audio.encoder", "audio.classifier", "visual.encoder", "visual.classifier", "fusion"}
    keys = [k for ks in groups.values() for k in ks]
    assert sorted(keys) == sorted(net.state_dict()) and len(keys) == len(set(keys))
    assert "branches.audio.encoder.cnn.0.1.running_mean" in groups["audio.encoder"]
    assert "branches.audio.infiltration_projector.weight" in groups["audio.encoder"]
    assert groups["audio.classifier"] == ["branches.audio.classifier.weight", "branches.audio.classifier.bias"]


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    rng = torch.random.get_rng_state()
    one, two = (build_model((SPEC, FRAMES), C, ModelConfig(embed_dim=8), seed=3).state_dict() for _ in range(2))
    other = build_model((SPEC, FRAMES), C, ModelConfig(embed_dim=8), seed=4).state_dict()
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(one["fusion.out.weight"], other["fusion.out.weight"])
    assert torch.all(one["branches.audio.encoder.cnn.0.1.running_var"] == 1)


@pytest.mark.parametrize("kwargs,match", [({"fusion": "attention"}, "concat, sum, film, gated"),
                                          ({"projector": "conv"}, "linear, mlp"), ({"embed_dim": 0}, "positive")])
def test_bad_model_options_are_user_errors(kwargs, match):
    with pytest.raises(CmiError, match=match):
        ModelConfig(**kwargs)


def test_three_modalities_build_and_two_slot_fusions_refuse_them():
    assert build_model((SPEC, FRAMES, TEXT), C).modalities == tuple(s.name for s in (SPEC, FRAMES, TEXT))
    with pytest.raises(CmiError, match="defined for two modalities.*concat, sum"):
        build_model((SPEC, FRAMES, TEXT), C, ModelConfig(fusion="film"))
