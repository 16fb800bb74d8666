import csv
import json
import sys

import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from tests.training.helpers import partitioned_workspace

QUICK_OPTIONS = ["--rounds", "2", "--clients-per-round", "3", "--local-epochs", "1", "--batch-size", "16",
                 "--set", "model.embed_dim=16", "--device", "cpu"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return partitioned_workspace(tmp_path_factory.mktemp("cli"))


def cmi(ws, *args, env=None):
    return CliRunner().invoke(app, ["--workspace", str(ws.root), *args], env={"CMI_THREADS": "1", **(env or {})})


def metrics_without_time(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "time_s"} for line in lines]


@pytest.fixture(scope="module")
def trained(ws):
    """One FedAvg run through the CLI, with a TensorBoard log: (result, run directory)."""
    result = cmi(ws, "train", *QUICK_OPTIONS, "--method", "fedavg", "--lr", "0.1", "--seed", "3",
                 "--log", "tensorboard")
    assert result.exit_code == 0, result.output
    return result, ws.artifact_dir("run", ws.latest_name("run"))


def test_train_prints_progress_and_a_summary_then_reports_completion(ws, trained):
    result, run_dir = trained
    out = result.stdout
    assert "fedavg on partition" in out and "round    1" in out and "round    2" in out
    assert "test accuracy" in out and "visual_only" in out and "cmi report" in out
    # a short default name: method, dataset, seed (once), settings hash
    assert run_dir.name.startswith("fedavg-toy-s3-") and run_dir.name.count("-s3") == 1
    assert len(run_dir.name) == len("fedavg-toy-s3-") + 6
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["rounds"], config["train"]["lr"], config["seed"], config["model"]["embed_dim"]) == (2, 0.1, 3, 16)

    again = cmi(ws, "train", *QUICK_OPTIONS, "--method", "fedavg", "--lr", "0.1", "--seed", "3")
    assert again.exit_code == 0 and "already complete" in again.stdout


def test_the_manifest_records_versions_command_and_threads_and_metrics_go_to_csv_and_tensorboard(trained):
    import torch

    import pipelines

    _, run_dir = trained
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["versions"] == {"cmi": pipelines.__version__, "torch": torch.__version__,
                                    "python": ".".join(map(str, sys.version_info[:3]))}
    assert isinstance(manifest["command"], str) and manifest["threads"] == 1
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [1, 2] and list(rows[0])[0] == "round"
    assert [float(r["test.accuracy.fused"]) for r in rows] == [line["test"]["accuracy"]["fused"] for line in lines]
    assert float(rows[1]["test.per_class_recall.audio_only.b"]) == lines[1]["test"]["per_class_recall"]["audio_only"][1]
    assert rows[0]["clients"] == " ".join(map(str, lines[0]["clients"]))
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    fused = acc.Scalars("test/accuracy/fused")
    assert [e.step for e in fused] == [1, 2]
    assert [e.value for e in fused] == pytest.approx([line["test"]["accuracy"]["fused"] for line in lines])


def test_a_runs_config_toml_or_json_repeats_the_run(ws, trained):
    _, run_dir = trained
    toml_text = (run_dir / "config.toml").read_text()
    assert f'partition = "{ws.latest_name("partition")}"' in toml_text and 'dataset = "toy"' in toml_text
    for source, name in (("config.toml", "repeat-toml"), ("config.json", "repeat-json")):
        result = cmi(ws, "train", "--config", str(run_dir / source), "--name", name, "--quiet")
        assert result.exit_code == 0, result.output
        assert metrics_without_time(ws.artifact_dir("run", name)) == metrics_without_time(run_dir), source


def test_quiet_prints_exactly_one_line_and_config_file_and_set_apply(ws, tmp_path):
    config = tmp_path / "settings.toml"
    config.write_text('method = "fedprox"\nrounds = 5\n[fedprox]\nmu = 0.5\n')
    result = cmi(ws, "train", "--config", str(config), *QUICK_OPTIONS, "--set", "fedprox.mu=0.25",
                 "--name", "from-file", "--quiet", env={"CMI_THREADS": "1"})
    assert result.exit_code == 0, result.output
    run_dir = ws.artifact_dir("run", "from-file")
    assert result.stdout == f"{run_dir}\n"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["method"] == "fedprox" and saved["rounds"] == 2 and saved["fedprox"] == {"aux_weight": 2.0, "mu": 0.25}
    assert json.loads((run_dir / "manifest.json").read_text())["threads"] == 1   # from CMI_THREADS
    again = cmi(ws, "train", "--config", str(config), *QUICK_OPTIONS, "--set", "fedprox.mu=0.25",
                "--name", "from-file", "--quiet")
    assert again.exit_code == 0 and again.stdout == f"{run_dir}\n"


@pytest.mark.parametrize("args, fragment", [
    (["--set", "fedcmi.kapa=1"], "unknown config key 'fedcmi.kapa'"),
    (["--rounds", "0"], "'rounds' must be an integer >= 1"),
    (["--set", "rounds"], "--set expects KEY=VALUE"),
    (["--partition", "nope"], "no partition named 'nope'"),
    (["--resume", "some-run", "--rounds", "5"], "--resume continues a run with its saved settings; drop rounds"),
    (["--config", "missing.toml"], "config file missing.toml does not exist"),
])
def test_user_errors_exit_2_with_the_fix(ws, args, fragment):
    result = cmi(ws, "train", *args)
    assert result.exit_code == 2
    assert fragment in " ".join(result.output.split())


@pytest.mark.parametrize("option, value", [("--method", "fedsgd"), ("--encoder", "vgg"), ("--fusion", "max"),
                                           ("--engine", "ray"), ("--device", "tpu"), ("--log", "wandb")])
def test_choices_are_listed_and_anything_else_is_a_usage_error(ws, option, value):
    result = cmi(ws, "train", option, value)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"Invalid value for '{option}'" in text and f"'{value}' is not" in text


def test_a_failed_simulation_pre_check_names_the_extra_and_leaves_no_run_directory(tmp_path, monkeypatch):
    import importlib.util

    ws = partitioned_workspace(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    result = cmi(ws, "train", *QUICK_OPTIONS, "--engine", "flower", "--simulation")
    assert result.exit_code == 2
    assert 'pip install -c constraints.txt "cmi[simulation]"' in " ".join(result.output.split())
    assert not ws.kind_dir("run").exists()


def test_log_tensorboard_without_the_package_names_the_extra_and_leaves_no_run_directory(tmp_path, monkeypatch):
    ws = partitioned_workspace(tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # as if tensorboard were not installed
    result = cmi(ws, "train", *QUICK_OPTIONS, "--log", "tensorboard")
    assert result.exit_code == 2
    assert 'pip install "cmi[tensorboard]"' in " ".join(result.output.split())
    assert not ws.kind_dir("run").exists()


def test_help_documents_every_option_its_default_its_choices_and_examples():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for option in ("--config", "--method", "--rounds", "--clients-per-round", "--local-epochs", "--lr", "--batch-size",
                   "--eval-every", "--seed", "--device", "--encoder", "--fusion", "--set", "--partition", "--name",
                   "--resume", "--force", "--threads", "--log", "--quiet"):
        assert option in result.output
    assert "fedcmi.kappa=1.5" in result.output and "Examples" in result.output
    # the defaults the help states are the config's, and the choices are the registries'
    from pipelines.engines import ENGINES
    from pipelines.fl import METHODS
    from pipelines.models import ENCODERS, FUSIONS
    from pipelines.training.config import DEVICES, resolve_config
    cfg = resolve_config()
    text = " ".join(result.output.replace("│", " ").split())
    for phrase in (f"Federated rounds. [default: {cfg.rounds}]", f"per round. [default: {cfg.clients_per_round}]",
                   f"per client update. [default: {cfg.train.local_epochs}]", f"rate. [default: {cfg.train.lr}]",
                   f"batch size. [default: {cfg.train.batch_size}]", f"always). [default: {cfg.eval_every}]",
                   f"shuffling. [default: {cfg.seed}]", f"else CPU. [default: {cfg.device}]",
                   f"(paper-faithful). [default: {cfg.model.encoder}]", f"Fusion head. [default: {cfg.model.fusion}]",
                   f"Federated method. [default: {cfg.method}]", "cmi[simulation] extra", "cmi[tensorboard] extra"):
        assert phrase in text, phrase
    for registry in (METHODS, ENCODERS, FUSIONS, ENGINES, DEVICES):
        assert "[" + " | ".join(registry) + "]" in text


@pytest.mark.parametrize("command", [["train"], ["flower"], ["experiment"], ["experiment", "run"], ["runs"]])
def test_help_has_examples(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "Examples" in result.output


@pytest.mark.parametrize("command", [[], ["experiment"], ["flower"]])
def test_a_command_group_without_a_command_prints_its_help_and_exits_0(command):
    result = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout and "Commands" in result.stdout
