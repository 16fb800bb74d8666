import json

import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from tests.training.helpers import partitioned_workspace

QUICK_OPTIONS = ["--rounds", "2", "--clients-per-round", "3", "--local-epochs", "1", "--batch-size", "16",
                 "--set", "model.embed_dim=16", "--device", "cpu"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return partitioned_workspace(tmp_path_factory.mktemp("cli"))


def cmi(ws, *args):
    return CliRunner().invoke(app, ["--workspace", str(ws.root), *args])


def test_train_prints_progress_and_a_summary_then_reports_completion(ws):
    result = cmi(ws, "train", *QUICK_OPTIONS, "--method", "fedavg", "--lr", "0.1", "--seed", "3")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "fedavg on partition" in out and "round    1" in out and "round    2" in out
    assert "test accuracy" in out and "visual_only" in out and "cmi report" in out
    run = ws.latest_name("run")
    assert run.startswith("fedavg-") and "-s3-" in run
    config = json.loads((ws.artifact_dir("run", run) / "config.json").read_text())
    assert (config["rounds"], config["train"]["lr"], config["seed"], config["model"]["embed_dim"]) == (2, 0.1, 3, 16)

    again = cmi(ws, "train", *QUICK_OPTIONS, "--method", "fedavg", "--lr", "0.1", "--seed", "3")
    assert again.exit_code == 0 and "already complete" in again.output


def test_quiet_prints_nothing_and_config_file_and_set_apply(ws, tmp_path):
    config = tmp_path / "settings.toml"
    config.write_text('method = "fedprox"\nrounds = 5\n[fedprox]\nmu = 0.5\n')
    result = cmi(ws, "train", "--config", str(config), *QUICK_OPTIONS, "--set", "fedprox.mu=0.25",
                 "--name", "from-file", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    saved = json.loads((ws.artifact_dir("run", "from-file") / "config.json").read_text())
    assert saved["method"] == "fedprox" and saved["rounds"] == 2 and saved["fedprox"] == {"aux_weight": 2.0, "mu": 0.25}


@pytest.mark.parametrize("args, fragment", [
    (["--set", "fedcmi.kapa=1"], "unknown config key 'fedcmi.kapa'"),
    (["--rounds", "0"], "'rounds' must be an integer >= 1"),
    (["--set", "rounds"], "--set expects KEY=VALUE"),
    (["--device", "tpu"], "'device' must be one of auto, cpu, cuda"),
    (["--partition", "nope"], "no partition named 'nope'"),
    (["--resume", "some-run", "--rounds", "5"], "--resume continues a run with its saved settings; drop rounds"),
    (["--config", "missing.toml"], "config file missing.toml does not exist"),
])
def test_user_errors_exit_2_with_the_fix(ws, args, fragment):
    result = cmi(ws, "train", *args)
    assert result.exit_code == 2
    assert fragment in " ".join(result.output.split())


def test_help_documents_every_option_and_its_default():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--config", "--method", "--rounds", "--clients-per-round", "--local-epochs", "--lr", "--batch-size",
                   "--eval-every", "--seed", "--device", "--encoder", "--fusion", "--set", "--partition", "--name",
                   "--resume", "--force", "--quiet"):
        assert option in result.output
    assert "fedcmi.kappa=1.5" in result.output
    # the defaults the help states are the config's
    from pipelines.fl import METHODS
    from pipelines.training.config import resolve_config
    cfg = resolve_config()
    text = " ".join(result.output.replace("│", " ").split())
    for phrase in (f"Federated rounds. [default: {cfg.rounds}]", f"per round. [default: {cfg.clients_per_round}]",
                   f"per client update. [default: {cfg.train.local_epochs}]", f"rate. [default: {cfg.train.lr}]",
                   f"batch size. [default: {cfg.train.batch_size}]", f"always). [default: {cfg.eval_every}]",
                   f"shuffling. [default: {cfg.seed}]", f"or cuda. [default: {cfg.device}]",
                   f"(paper-faithful). [default: {cfg.model.encoder}]", f"gated. [default: {cfg.model.fusion}]",
                   f"{cfg.method} (default)"):
        assert phrase in text, phrase
    assert all(name in text for name in METHODS)
