from pathlib import Path

import pytest

from pipelines.errors import CmiError
from pipelines.experiments.spec import build_spec, expand, read_experiment_file
from tests.training.helpers import partitioned_workspace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FILE = """
rounds = 2
[train]
lr = 0.05

[experiment]
name = "grid"
methods = ["fedavg", "fedprox", "fedcmi"]
seeds = [0, 1]

[grid]
"fedcmi.kappa" = [1.0, 2.0, 4.0]
"train.local_epochs" = [1, 2]
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return partitioned_workspace(tmp_path_factory.mktemp("spec"))


@pytest.fixture
def experiment_file(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(FILE)
    return path


def test_cells_are_methods_x_grid_values_x_seeds_and_a_methods_own_key_varies_its_cells_only(ws, experiment_file):
    spec = build_spec(experiment_file)
    cells = expand(spec, ws)
    # fedavg, fedprox: 2 local_epochs x 2 seeds; fedcmi: 3 kappas x 2 local_epochs x 2 seeds
    assert len(cells) == 2 * 2 + 2 * 2 + 3 * 2 * 2
    partition = ws.latest_name("partition")
    assert [c.cell.run for c in cells[:4]] == ["grid-fedavg-local_epochs=1-s0", "grid-fedavg-local_epochs=1-s1",
                                               "grid-fedavg-local_epochs=2-s0", "grid-fedavg-local_epochs=2-s1"]
    fedcmi = [c for c in cells if c.cell.method == "fedcmi"]
    assert fedcmi[0].cell.run == "grid-fedcmi-kappa=1-local_epochs=1-s0"
    assert {(c.cell.overrides["fedcmi.kappa"], c.cell.overrides["train.local_epochs"], c.cell.seed) for c in fedcmi} \
        == {(k, e, s) for k in (1.0, 2.0, 4.0) for e in (1, 2) for s in (0, 1)}
    for planned in cells:
        cell, config = planned.cell, planned.config
        assert cell.partition == partition and cell.status == "pending"
        assert (config.method, config.seed, config.rounds, config.train.lr) == (cell.method, cell.seed, 2, 0.05)
        assert config.train.local_epochs == cell.overrides["train.local_epochs"]
        if cell.method == "fedcmi":
            assert config.hparams.kappa == cell.overrides["fedcmi.kappa"]
        else:
            assert "fedcmi.kappa" not in cell.overrides
    # the names are stable: the same experiment expands to the same runs
    assert [c.cell.run for c in expand(build_spec(experiment_file), ws)] == [c.cell.run for c in cells]
    assert len({c.cell.run for c in cells}) == len(cells)


def test_options_replace_the_files_lists_and_add_grid_keys(ws, experiment_file):
    spec = build_spec(experiment_file, methods=["fedcmi"], seeds=[5], grid=["fedcmi.kappa=1,3", "model.fusion=sum"],
                      settings={"rounds": 3}, name="other")
    cells = expand(spec, ws)
    assert spec.name == "other" and spec.grid["fedcmi.kappa"] == (1, 3)
    assert [c.cell.run for c in cells] == [
        f"other-fedcmi-kappa={k}-local_epochs={e}-fusion=sum-s5" for k in (1, 3) for e in (1, 2)]
    assert all(c.config.rounds == 3 and c.config.model.fusion == "sum" for c in cells)


def test_without_a_file_the_options_say_everything_and_the_name_is_a_stable_hash(ws):
    spec = build_spec(methods=["fedavg", "fedcmi"], seeds=[0, 1, 2], settings={"rounds": 2})
    assert spec.name.startswith("experiment-") and spec.name == build_spec(
        methods=["fedavg", "fedcmi"], seeds=[0, 1, 2], settings={"rounds": 2}).name
    assert [(c.cell.method, c.cell.seed) for c in expand(spec, ws)] == [
        (m, s) for m in ("fedavg", "fedcmi") for s in (0, 1, 2)]


def test_flower_cells_carry_the_engine(ws, experiment_file):
    spec = build_spec(experiment_file, settings={"engine": "flower"}, grid=["clients_per_round=2,3"])
    cells = expand(spec, ws)
    assert cells and all(c.config.engine == "flower" for c in cells)
    assert {c.config.clients_per_round for c in cells} == {2, 3}
    assert all("-clients_per_round=" in c.cell.run for c in cells)


def test_several_partitions_name_the_partition_in_each_run(ws):
    from pipelines.partitioning import PartitionSettings, run_partition

    other = run_partition(ws, PartitionSettings.from_options(iid=True, clients=4, seed=1)).artifact.name
    first = sorted(n for n in ws.list("partition") if n != other)[0]
    spec = build_spec(name="grid", methods=["fedavg"], seeds=[0], grid=["train.local_epochs=1,2"],
                      partitions=[first, other])
    runs = [c.cell.run for c in expand(spec, ws)]
    assert runs == [f"grid-fedavg-{p}-local_epochs={e}-s0" for p in (first, other) for e in (1, 2)]


def test_the_saved_experiment_file_reads_back_to_the_same_spec(ws, experiment_file, tmp_path):
    spec = build_spec(experiment_file, partitions=[ws.latest_name("partition")])
    saved = tmp_path / "saved.toml"
    saved.write_text(spec.to_toml("a header"))
    assert build_spec(saved) == spec


@pytest.mark.parametrize("text, fragment", [
    ('[experiment]\nmethods = ["fedsgd"]\n', "unknown method 'fedsgd'"),
    ('[experiment]\nmethod = ["fedavg"]\n', "unknown key(s) method in [experiment]"),
    ('[experiment]\nseeds = [0, 0]\n', "seeds repeat a value"),
    ('[experiment]\nseeds = "0"\n', "seeds must be a non-empty list of ints"),
    ('[grid]\n"fedcmi.kapa" = [1]\n', "unknown grid key 'fedcmi.kapa'"),
    ('[grid]\nseed = [1, 2]\n', "'seed' cannot be a grid key"),
    ('[experiment]\nmethods = ["fedavg"]\n[grid]\n"fedcmi.kappa" = [1]\n', "is a setting of method fedcmi"),
    ('[grid]\n"fedcmi.kappa" = [1, 1.0]\n', "several cells the run name"),
    ('[grid]\n"fedcmi.kappa" = [-1]\n', "kappa"),
    ('[grid]\n"fedcmi.kappa" = [1]\nrounds = 3\n', "Base settings go before the [experiment] and [grid] tables"),
    ('rounds = 0\n', "'rounds' must be an integer >= 1"),
    ('[experiment]\nname = "a/b"\n', "is not usable as a folder name"),
    ('[experiment]\npartitions = ["nope"]\n', "no partition named 'nope'"),
])
def test_mistakes_stop_the_experiment_before_anything_runs(ws, tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CmiError) as err:
        expand(build_spec(path), ws)
    assert fragment in str(err.value)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(CmiError, match="does not exist"):
        read_experiment_file(tmp_path / "nope.toml")
    (tmp_path / "broken.toml").write_text("[experiment\n")
    with pytest.raises(CmiError, match="not valid TOML"):
        read_experiment_file(tmp_path / "broken.toml")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("experiment-*.toml")), ids=lambda p: p.name)
def test_example_experiments_expand(ws, path):
    cells = expand(build_spec(path), ws)
    assert cells and len({c.cell.run for c in cells}) == len(cells)


def test_the_synthetic_example_is_fedavg_fedprox_fedcmi_times_three_seeds(ws):
    cells = expand(build_spec(EXAMPLES / "experiment-synthetic.toml"), ws)
    assert sorted((c.cell.method, c.cell.seed) for c in cells) == sorted(
        (m, s) for m in ("fedavg", "fedprox", "fedcmi") for s in (0, 1, 2))


def test_the_balancing_methods_grid_with_their_own_keys(ws, tmp_path):
    path = tmp_path / "balancing.toml"
    path.write_text('[experiment]\nname = "bal"\nmethods = ["fedavg", "cmsfed", "pmr", "ogm_ge"]\nseeds = [0]\n'
                    '[grid]\n"cmsfed.theta" = [1.2, 1.5]\n"pmr.alpha" = [1.0, 2.0]\n')
    cells = expand(build_spec(path), ws)
    assert sorted(c.cell.run for c in cells) == sorted([
        "bal-fedavg-s0", "bal-cmsfed-theta=1.2-s0", "bal-cmsfed-theta=1.5-s0", "bal-pmr-alpha=1-s0", "bal-pmr-alpha=2-s0",
        "bal-ogm_ge-s0"])
    thetas = {c.config.hparams.theta for c in cells if c.cell.method == "cmsfed"}
    assert thetas == {1.2, 1.5}
