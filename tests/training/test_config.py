import json
from pathlib import Path

import pytest

from pipelines.artifacts import fingerprint
from pipelines.errors import CmiError
from pipelines.fl import FedCMIHparams, TrainConfig
from pipelines.models import ModelConfig
from pipelines.training.config import (
    DEFAULT_TRAIN, RunConfig, config_keys, config_toml, flatten, parse_assignment, read_config_file,
    resolve_config, split_location,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_defaults_are_the_cpu_quick_fedcmi_run():
    cfg = resolve_config()
    assert cfg.method == "fedcmi" and cfg.engine == "local" and cfg.device == "auto"
    assert cfg.model == ModelConfig() and cfg.train == DEFAULT_TRAIN
    assert cfg.hparams == FedCMIHparams()


def test_unknown_key_lists_the_valid_keys_and_suggests_the_closest():
    with pytest.raises(CmiError) as err:
        resolve_config({"fedcmi": {"kapa": 1.0}})
    msg = str(err.value)
    assert "'fedcmi.kapa'" in msg and "did you mean 'fedcmi.kappa'" in msg
    for key in ("rounds", "clients_per_round", "train.lr", "model.encoder", "fedcmi.kappa", "unimodal.modality"):
        assert key in msg
    assert "--set" in msg
    with pytest.raises(CmiError, match="unknown config key 'model'"):
        resolve_config({"model": 3})


@pytest.mark.parametrize("settings, fragment", [
    ({"rounds": 0}, "'rounds' must be an integer >= 1"),
    ({"rounds": 2.5}, "'rounds' must be an integer"),
    ({"rounds": True}, "'rounds' must be an integer"),
    ({"clients_per_round": 0}, "'clients_per_round' must be an integer >= 1"),
    ({"train.lr": -0.1}, "need lr > 0"),
    ({"train.batch_size": 0}, "batch_size >= 1"),
    ({"train.lr": "fast"}, "'train.lr' must be a number"),
    ({"device": "tpu"}, "'device' must be one of auto, cpu, cuda"),
    ({"method": "fedsgd"}, "'method' must be one of fedavg"),
    ({"engine": "ray"}, "'engine' must be one of the engines"),
    ({"fedcmi.infiltration": "yes"}, "'fedcmi.infiltration' must be true or false"),
])
def test_bad_values_name_the_key_and_what_it_must_be(settings, fragment):
    with pytest.raises(CmiError) as err:
        resolve_config(settings)
    assert fragment in str(err.value)


def test_the_models_and_methods_own_validation_becomes_a_cmi_error():
    with pytest.raises(CmiError, match="model.encoder = 'vgg'"):
        resolve_config({"model.encoder": "vgg"})
    with pytest.raises(CmiError, match="kappa"):
        resolve_config({"fedcmi.kappa": -1.0})
    # a section of a method other than the chosen one is validated too
    with pytest.raises(CmiError, match="mu"):
        resolve_config({"method": "fedavg", "fedprox": {"mu": -1.0}})


def test_layers_override_in_order_and_ints_are_accepted_as_floats():
    cfg = resolve_config(
        {"rounds": 7, "train": {"lr": 1, "batch_size": 8}, "fedcmi": {"kappa": 3}},
        {"rounds": 9, "train.local_epochs": 4},
        {"fedcmi.kappa": 1.5},
    )
    assert cfg.rounds == 9
    assert cfg.train == TrainConfig(lr=1.0, momentum=DEFAULT_TRAIN.momentum, weight_decay=DEFAULT_TRAIN.weight_decay,
                                    local_epochs=4, batch_size=8)
    assert isinstance(cfg.train.lr, float)
    assert cfg.hparams.kappa == 1.5 and cfg.hparams.mu == FedCMIHparams().mu


def test_hparams_follow_the_chosen_method():
    cfg = resolve_config({"method": "unimodal", "unimodal.modality": "visual", "fedcmi.kappa": 4.0})
    assert cfg.hparams.modality == "visual"
    d = cfg.to_dict()
    assert d["unimodal"] == {"modality": "visual"} and "fedcmi" not in d


def test_to_dict_round_trips_and_identity_ignores_the_device():
    cfg = resolve_config({"method": "fedprox", "fedprox.mu": 0.1, "model.fusion": "film", "seed": 3})
    assert resolve_config(cfg.to_dict()) == cfg
    assert set(cfg.to_dict()) == {
        "method", "engine", "rounds", "clients_per_round", "eval_every", "eval_train_every", "seed", "device",
        "eval_batch_size", "model", "train", "fedprox",
    }
    assert resolve_config(cfg.to_dict(), {"device": "cuda"}).identity() == cfg.identity()
    assert resolve_config(cfg.to_dict(), {"seed": 4}).identity() != cfg.identity()
    # eval_train_every at its default leaves the identity of runs made before the setting existed
    before = {k: v for k, v in cfg.to_dict().items() if k not in ("device", "eval_train_every")}
    assert cfg.identity() == fingerprint(before)[:8]
    assert resolve_config(cfg.to_dict(), {"eval_train_every": 5}).identity() != cfg.identity()


@pytest.mark.parametrize("text, expected", [
    ("fedcmi.kappa=1.5", ("fedcmi.kappa", 1.5)),
    ("rounds = 3", ("rounds", 3)),
    ("fedcmi.infiltration=false", ("fedcmi.infiltration", False)),
    ("model.encoder=resnet18", ("model.encoder", "resnet18")),
    ('model.fusion="gated"', ("model.fusion", "gated")),
])
def test_parse_assignment_reads_toml_values_or_bare_strings(text, expected):
    assert parse_assignment(text) == expected


def test_parse_assignment_rejects_a_missing_equals_sign():
    with pytest.raises(CmiError, match="KEY=VALUE"):
        parse_assignment("rounds")


def test_optional_values_accept_none():
    assert resolve_config({"fedcmi.uniform_temperature": 0.5}).hparams.uniform_temperature == 0.5
    assert resolve_config({"fedcmi.uniform_temperature": "none"}).hparams.uniform_temperature is None


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(CmiError, match="does not exist"):
        read_config_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    with pytest.raises(CmiError, match="not valid TOML"):
        read_config_file(bad)
    good = tmp_path / "good.toml"
    good.write_text('method = "fedavg"\n[train]\nlr = 0.2\n')
    assert read_config_file(good) == {"method": "fedavg", "train.lr": 0.2}


def test_every_key_has_a_type():
    keys = config_keys()
    assert keys["rounds"] is int and keys["train.lr"] is float and keys["model.encoder"] is str
    assert "hparams" not in keys and "model" not in keys


#: the training configs of examples/ (experiment-*.toml are experiment files: tests/experiments)
CONFIG_EXAMPLES = sorted(p for p in EXAMPLES.glob("*.toml") if not p.name.startswith("experiment-"))


@pytest.mark.parametrize("path", CONFIG_EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    cfg = resolve_config(read_config_file(path))
    assert isinstance(cfg, RunConfig)
    if "cpu-quick" not in path.name:
        assert cfg.model.encoder == "resnet18" and cfg.model.embed_dim == 512
        assert (cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay, cfg.train.local_epochs) == (1e-3, 0.9, 1e-4, 10)
        assert cfg.clients_per_round == 5


def test_there_are_paper_and_cpu_quick_examples_for_each_dataset():
    names = {p.name for p in CONFIG_EXAMPLES}
    for dataset in ("cremad", "ave", "crisismmd"):
        assert {f"{dataset}.toml", f"{dataset}-cpu-quick.toml"} <= names


def test_config_toml_reads_back_to_the_same_config_and_location(tmp_path):
    cfg = resolve_config({"method": "fedcmi", "fedcmi.uniform_temperature": "none", "fedcmi.kappa": 1.5,
                          "model.fusion": "film", "train.lr": 1e-3, "seed": 7})
    path = tmp_path / "config.toml"
    path.write_text(config_toml(cfg, partition="p-1", dataset="toy", header="line one\nline two"))
    assert path.read_text().startswith("# line one\n# line two\n")
    settings, location = split_location(read_config_file(path))
    assert location == {"partition": "p-1", "dataset": "toy"}
    assert resolve_config(settings) == cfg and resolve_config(settings).hparams.uniform_temperature is None
    # every setting is spelled out, so a later change of a default cannot change what the file means
    assert set(settings) == set(flatten(cfg.to_dict()))


def test_a_json_config_is_read_and_a_run_config_json_takes_its_location_from_the_manifest(tmp_path):
    from pipelines.artifacts import write_manifest

    cfg = resolve_config({"method": "fedprox", "rounds": 3})
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert split_location(read_config_file(tmp_path / "config.json"))[1] == {}
    write_manifest(tmp_path, "run", cfg.to_dict(), extra={"status": "complete", "partition": "p", "dataset": "d"})
    settings, location = split_location(read_config_file(tmp_path / "config.json"))
    assert location == {"partition": "p", "dataset": "d"} and resolve_config(settings) == cfg
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CmiError, match="not valid JSON"):
        read_config_file(tmp_path / "bad.json")


def test_location_keys_must_be_names():
    with pytest.raises(CmiError, match="'partition' must be the name of a partition"):
        split_location({"partition": 3, "rounds": 2})
    assert split_location({"rounds": 2}) == ({"rounds": 2}, {})
