"""FedCMI (and the shared objective) with three modalities: the M-ary rules of
``pipelines/fl/fedcmi.py``'s module docstring, by hand and against the two-modality code."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.errors import CmiError
from pipelines.fl import METHODS, FedAvg, FedCMI, FedCMIHparams, TrainConfig, TrainPool
from pipelines.fl.fedcmi import class_temperatures, dominant_modality, modality_pairs
from pipelines.fl.measures import dominance_ratio
from pipelines.models import ModelConfig, build_model
from pipelines.shards import ModalitySpec
from tests.fl.common import CPU, NUM_CLASSES, assert_states_equal, client, make_pool

SPECS3 = [ModalitySpec("audio", "spectrogram", (8, 12), "float32"), ModalitySpec("text", "embedding", (5,), "float32"),
          ModalitySpec("imu", "embedding", (4,), "float32")]
MODS = tuple(s.name for s in SPECS3)
D = 8


def cmi(specs=SPECS3, hparams=FedCMIHparams(), seed=0):
    return FedCMI(lambda: build_model(specs, NUM_CLASSES, ModelConfig(embed_dim=D), seed=seed),
                  TrainConfig(batch_size=8), hparams, CPU)


def mixed_pool(n=24, seed=0) -> TrainPool:
    """Rows cycle through: all three, all three, audio+text, audio+imu, text+imu, audio, text, imu."""
    pool = make_pool(n, seed=seed, specs=SPECS3)
    pattern = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
                           dtype=torch.bool)
    rows = pattern[torch.arange(n) % len(pattern)]
    return TrainPool(inputs=pool.inputs, present={m: rows[:, k] for k, m in enumerate(MODS)}, labels=pool.labels)


def prepared(method, pool, rows, round_idx=1):
    start = method.model_factory().state_dict()
    model = method.model
    model.load_state_dict(start)
    rows = np.asarray(rows)
    ctx = method.prepare_round(model, start, pool, rows, client(rows, MODS), round_idx)
    return start, model, ctx


def _logits(probs, labels):
    """Two-class logits whose softmax gives the ground truth probability ``probs[i]``."""
    p = torch.tensor(probs, dtype=torch.float64)
    z = torch.zeros((len(probs), 2), dtype=torch.float64)
    z[torch.arange(len(probs)), torch.tensor(labels)] = torch.log(p / (1 - p))
    return z


# ----------------------------------------------------------------------------- dominant modality
def test_the_dominant_modality_is_the_largest_score_ties_to_the_later_modality():
    y = [0, 1]
    a, b, c = _logits([.5, .5], y), _logits([.75, .5], y), _logits([.6, .6], y)     # scores 1.0, 1.25, 1.2
    labels = torch.tensor(y)
    assert dominant_modality([a, b, c], labels) == 1
    assert dominant_modality([b, a, c], labels) == 0
    assert dominant_modality([a, c, b], labels) == 2
    assert dominant_modality([a, b, b.clone()], labels) == 2         # a tie goes to the later modality
    assert dominant_modality([b, b.clone(), a], labels) == 1
    assert dominant_modality([b, a, b.clone()], labels) == 2


def test_with_two_modalities_the_rule_is_rho_above_one():
    """The M-ary rule agrees with the spec's ρ > 1 → A, else B, ties included (→ B)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (7,), generator=g)
    for _ in range(200):
        a, b = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
        assert dominant_modality([a, b], labels) == (0 if bool(dominance_ratio(a, b, labels) > 1) else 1)
    assert dominant_modality([a, a.clone()], labels) == 1 and not bool(dominance_ratio(a, a, labels) > 1)


# ----------------------------------------------------------------------------- temperatures, teacher
def test_teacher_and_per_pair_temperatures_come_from_the_global_models_rows_with_every_modality():
    pool = mixed_pool(24)
    m = cmi()
    start, _, ctx = prepared(m, pool, range(24))
    complete = (pool.present["audio"] & pool.present["text"] & pool.present["imu"]).numpy()
    assert ctx.teacher_rows.tolist() == np.flatnonzero(complete).tolist()
    g = build_model(SPECS3, NUM_CLASSES, ModelConfig(embed_dim=D))
    g.load_state_dict(start)
    g.eval()
    with torch.no_grad():
        out = g(pool.inputs, pool.present)
    labels = pool.labels[complete]
    probs = {}
    for mod in MODS:
        assert torch.allclose(ctx.teacher_logits[mod], out.self_logits[mod][complete], atol=1e-5)
        probs[mod] = out.self_logits[mod][complete].softmax(1).gather(1, labels[:, None]).squeeze(1)
    assert modality_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    assert ctx.pairs == [(MODS[i], MODS[j]) for i, j in modality_pairs(3)]
    assert ctx.temperatures.shape == (3, NUM_CLASSES)
    for p, (i, j) in enumerate(modality_pairs(3)):
        hand = class_temperatures(probs[MODS[i]], probs[MODS[j]], labels, NUM_CLASSES, 2.0)
        assert torch.allclose(ctx.temperatures[p], hand, atol=1e-5)
        # the student of either orientation of the pair reads the same T
        assert torch.equal(m.pair_temperatures(ctx, MODS[i], MODS[j]), ctx.temperatures[p])
        assert torch.equal(m.pair_temperatures(ctx, MODS[j], MODS[i]), ctx.temperatures[p])
    # reported: the per-class mean over the pairs
    assert ctx.metrics["temperatures"] == pytest.approx(ctx.temperatures.mean(0).tolist())
    _, _, uniform = prepared(cmi(hparams=FedCMIHparams(uniform_temperature=0.7)), pool, range(24))
    assert torch.equal(uniform.temperatures, torch.full((3, NUM_CLASSES), 0.7))
    assert uniform.metrics["temperatures"] == pytest.approx([0.7] * NUM_CLASSES)


def test_two_modalities_keep_one_temperature_vector():
    specs = SPECS3[:2]
    pool = make_pool(16, specs=specs)
    m = cmi(specs)
    start = m.model_factory().state_dict()
    m.model.load_state_dict(start)
    ctx = m.prepare_round(m.model, start, pool, np.arange(16), client(range(16), MODS[:2]), 1)
    assert ctx.pairs == [MODS[:2]] and ctx.temperatures.shape == (NUM_CLASSES,)
    assert ctx.metrics["temperatures"] == ctx.temperatures.tolist()


# ----------------------------------------------------------------------------- L_inf
def test_infiltration_by_hand_every_other_modality_is_a_student():
    pool = mixed_pool(24, seed=1)
    m = cmi(seed=1)
    _, model, ctx = prepared(m, pool, range(24))
    model.train()
    batch = next(pool.batches(np.arange(24), 24, None, shuffle=False))
    outputs = model(batch.inputs, batch.present)
    loss, dominant, students = m.infiltration_terms(outputs, batch, ctx)

    complete = outputs.valid["fused"]
    y = batch.labels[complete]
    scores = [float(outputs.self_logits[mod][complete].detach().softmax(1)[torch.arange(len(y)), y].sum()) for mod in MODS]
    best = max(scores)
    assert dominant == MODS[max(k for k, s in enumerate(scores) if s == best)]
    assert students == tuple(mod for mod in MODS if mod != dominant)
    rows = batch.indices[complete].tolist()
    position = [ctx.teacher_rows.tolist().index(r) for r in rows]
    teacher = ctx.teacher_logits[dominant][position]
    terms = []
    for student in students:
        i, j = sorted((MODS.index(dominant), MODS.index(student)))
        t = ctx.temperatures[ctx.pairs.index((MODS[i], MODS[j]))][y].unsqueeze(1)
        target = (teacher / t).softmax(1)
        terms.append(-(target * (outputs.infiltration_logits[student][complete] / t).log_softmax(1)).sum(1).mean())
    assert float(loss.detach()) == pytest.approx(float(sum(terms).detach() / 2), rel=1e-6)
    assert m.infiltration_term(outputs, batch, ctx)[1] == students

    # the gradient reaches every student's E, I and C, nothing of the dominant modality nor F
    named = list(model.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    reached = tuple(f"branches.{s}.{part}." for s in students
                    for part in ("encoder", "infiltration_projector", "classifier"))
    for (name, _), grad in zip(named, grads):
        if name.startswith(reached):
            assert grad is not None and grad.abs().sum() > 0, name
        else:
            assert grad is None or torch.all(grad == 0), name


def test_each_student_term_is_the_two_modality_fedcmi_term_of_its_pair():
    """The exact comparison with today's two-modality code: on rows that have every modality, a
    three-modality client's L_inf is the mean, over the students m, of what a two-modality FedCMI
    on the pair {d, m} (same branch weights, manifest order) computes: same teacher (d's global
    self logits), same student (m's infiltration logits), same T (class_temperatures of the pair),
    and the pair's own ρ rule picks d over m."""
    pool = make_pool(20, seed=3, specs=SPECS3)                       # every row has every modality
    three = cmi(seed=3)
    start, model, ctx = prepared(three, pool, range(20))
    model.train()
    batch = next(pool.batches(np.arange(20), 10, None, shuffle=False))
    loss, dominant, students = three.infiltration_terms(model(batch.inputs, batch.present), batch, ctx)
    pair_losses = []
    for student in students:
        pair_specs = [s for s in SPECS3 if s.name in (dominant, student)]           # manifest order
        two = cmi(pair_specs, seed=99)
        pair_start = two.model_factory().state_dict()
        pair_start.update({k: v for k, v in start.items() if k.startswith("branches.") and k in pair_start})
        two.model.load_state_dict(pair_start)
        two_ctx = two.prepare_round(two.model, pair_start, pool, np.arange(20),
                                    client(range(20), [s.name for s in pair_specs]), 1)
        assert torch.allclose(two_ctx.temperatures, three.pair_temperatures(ctx, dominant, student), atol=1e-6)
        two.model.train()
        pair_loss, weak = two.infiltration_term(two.model(batch.inputs, batch.present), batch, two_ctx)
        assert weak == student
        pair_losses.append(pair_loss.item())
    assert loss.item() == pytest.approx(np.mean(pair_losses), rel=1e-6)


def test_with_one_modality_absent_everywhere_the_loss_is_the_two_modality_loss():
    """imu absent on every row, so a client holds audio and text only (as a partition records
    it): its multimodal rows are its audio+text rows, and the three-modality FedCMI loss (routed
    CE, λ1 self terms, infiltration with the teacher and temperatures of the pair) equals the
    two-modality FedCMI loss of a model with the same branches and the concat head's audio/text
    blocks, when the head's imu block is zero (the mean-of-infiltration fill of the imu slot then
    adds nothing)."""
    base = make_pool(16, seed=4, specs=SPECS3)
    audio = torch.arange(16) % 3 != 2
    text = torch.arange(16) % 3 != 1
    pool = TrainPool(inputs=base.inputs, labels=base.labels,
                     present={"audio": audio, "text": text, "imu": torch.zeros(16, dtype=torch.bool)})
    holds = client(range(16), MODS[:2])
    three = cmi(seed=4)
    state = three.model_factory().state_dict()
    state["fusion.out.weight"][:, 2 * D:] = 0
    three.model.load_state_dict(state)
    ctx3 = three.prepare_round(three.model, state, pool, np.arange(16), holds, 2)

    two = cmi(SPECS3[:2], seed=8)
    two_state = {k: (v[:, :2 * D] if k == "fusion.out.weight" else v) for k, v in state.items()
                 if not k.startswith("branches.imu.")}
    two.model.load_state_dict(two_state)
    ctx2 = two.prepare_round(two.model, two_state, pool, np.arange(16), holds, 2)
    assert ctx3.teacher_logits is not None and set(ctx3.teacher_logits) == {"audio", "text"}
    assert torch.equal(ctx3.temperatures, ctx2.temperatures) and ctx3.metrics == ctx2.metrics
    for m in ("audio", "text"):
        assert torch.allclose(ctx3.teacher_logits[m], ctx2.teacher_logits[m], atol=1e-6)
    three.model.train()
    two.model.train()
    batch = next(pool.batches(np.arange(16), 16, None, shuffle=False))
    out3, out2 = three.model(batch.inputs, batch.present), two.model(batch.inputs, batch.present)
    loss3 = three.local_loss(three.model, out3, batch, ctx3)
    loss2 = two.local_loss(two.model, out2, batch, ctx2)
    plain = FedAvg.local_loss(two, two.model, out2, batch, ctx2)
    assert loss2.item() > plain.item()                   # infiltration took part
    assert loss3.item() == pytest.approx(loss2.item(), rel=1e-6)


# ----------------------------------------------------------------------------- objectives, protocol
def test_the_shared_objective_with_three_modalities_by_hand():
    pool = mixed_pool(16, seed=5)
    m = FedAvg(lambda: build_model(SPECS3, NUM_CLASSES, ModelConfig(embed_dim=D), seed=5), TrainConfig(),
               FedAvg.Hparams(aux_weight=1.5), CPU)
    batch = next(pool.batches(np.arange(16), 16, None, shuffle=False))
    outputs = m.model(batch.inputs, batch.present)
    complete = outputs.valid["fused"]
    routed = F.cross_entropy(outputs.routed, batch.labels, reduction="sum")      # every row has a modality
    aux = sum(F.cross_entropy(outputs.self_logits[mod][complete], batch.labels[complete], reduction="sum")
              for mod in MODS)
    loss = m.local_loss(m.model, outputs, batch, m.prepare_round(m.model, {}, pool, np.arange(16), client(range(16), MODS), 0))
    assert loss.item() == pytest.approx(((routed + 1.5 * aux) / 16).item(), rel=1e-6)


def test_the_objective_adds_infiltration_on_the_share_of_rows_with_every_modality():
    pool = mixed_pool(16, seed=6)
    m = cmi(hparams=FedCMIHparams(infiltration_weight=1.5), seed=6)
    _, model, ctx = prepared(m, pool, range(16))
    model.train()
    batch = next(pool.batches(np.arange(16), 16, None, shuffle=False))
    outputs = model(batch.inputs, batch.present)
    n_complete = int(outputs.valid["fused"].sum())
    assert 0 < n_complete < 16
    inf, _, _ = m.infiltration_terms(outputs, batch, ctx)
    total = m.local_loss(model, outputs, batch, ctx)
    base = FedAvg.local_loss(m, model, outputs, batch, ctx)
    assert total.item() == pytest.approx((base + 1.5 * inf * n_complete / 16).item(), rel=1e-6)


def test_three_modality_client_updates_are_deterministic():
    pool = mixed_pool(32, seed=7)
    start = cmi().model_factory().state_dict()
    one, two = (cmi().client_update(start, pool, client(range(32), MODS), round_idx=2, seed=13) for _ in range(2))
    assert_states_equal(one.state, two.state)
    assert one.metrics == two.metrics and one.trained_groups == two.trained_groups
    assert len(one.metrics["temperatures"]) == NUM_CLASSES
    assert one.trained_groups == {f"{mod}.{part}" for mod in MODS for part in ("encoder", "classifier")} | {"fusion"}


@pytest.mark.parametrize("name", ["cmsfed", "pmr", "ogm_ge", "mnl", "remix", "arm", "agm", "mmpareto", "aug"])
def test_two_modality_methods_refuse_three(name):
    cls = METHODS[name]
    hp = cls.Hparams()
    with pytest.raises(CmiError, match="two modalities"):
        factory = lambda: cls.network(cls.select_specs(SPECS3, hp), NUM_CLASSES, ModelConfig(embed_dim=64), hp)
        cls(factory, TrainConfig(), hp, CPU)
