"""What cmi hands to Flower's processes and CLI, without starting any: the environment (our own
FLWR_HOME, no telemetry, never a runtime dependency installation) and the SuperLink connection."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.engines.flower.deployment import CONNECTION, FlowerControl, flower_environment, free_ports, node_config
from pipelines.engines.flower.run import FlowerOptions, check_simulation_runtime
from pipelines.errors import CmiError
from pipelines.training.config import tomllib


def test_environment_keeps_flower_in_its_home_and_never_installing(tmp_path):
    env = flower_environment(tmp_path)
    assert env["FLWR_HOME"] == str(tmp_path)
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)   # this venv's flwr-* scripts first


def test_connection_is_plaintext_or_tls_with_the_given_ca(tmp_path):
    plain = FlowerControl(tmp_path / "a", "127.0.0.1:9093")
    config = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    assert config["superlink"] == {"default": CONNECTION, CONNECTION: {"address": "127.0.0.1:9093", "insecure": True}}
    assert plain.env["FLWR_HOME"] == str((tmp_path / "a").resolve())
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    FlowerControl(tmp_path / "b", "server.example:9093", tmp_path / "ca.pem")
    config = tomllib.loads((tmp_path / "b" / "config.toml").read_text())
    assert config["superlink"][CONNECTION] == {"address": "server.example:9093",
                                              "root-certificates": str((tmp_path / "ca.pem").resolve())}


def test_node_config_and_free_ports():
    assert node_config(2, 5, {"threads": 1}) == {"partition-id": 2, "num-partitions": 5, "threads": 1}
    ports = free_ports(4)
    assert len(set(ports)) == 4 and all(1024 <= p < 65536 for p in ports)


def test_flower_options_without_the_flower_engine_are_a_usage_error_before_anything_is_written(tmp_path):
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "ws"), "train", "--supernodes", "3",
                                      "--round-timeout", "60"])
    assert result.exit_code == 2
    assert "--supernodes, --round-timeout only apply to --engine flower" in " ".join(result.output.split())
    assert not (tmp_path / "ws").exists()


def test_simulation_excludes_superlink():
    with pytest.raises(CmiError, match="drop --superlink"):
        check_simulation_runtime(FlowerOptions(superlink="127.0.0.1:9093", simulation=True))
    check_simulation_runtime(FlowerOptions(simulation=True))   # Ray is installed with the test extra
