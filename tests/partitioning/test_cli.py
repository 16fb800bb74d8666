import pytest
from typer.testing import CliRunner

from cmi_cli.app import app
from pipelines.artifacts import Workspace
from pipelines.partitioning import read_partition
from pipelines.shards import ModalitySpec
from tests.factories import DEFAULT_SPECS, make_dataset

runner = CliRunner()


def _invoke(ws: Workspace, *args: str):
    return runner.invoke(app, ["--workspace", str(ws.root), "partition", *args])


def test_the_users_line_works_and_prints_the_summary(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws, per_class={"train": 30, "val": 2, "test": 2})
    result = _invoke(ws, "--alpha", "0.5", "--missing", "0.3")
    assert result.exit_code == 0, result.output
    artifact = ws.resolve("partition")
    assert artifact.name == "toy-dir0.5-c20-m0.3-s0"
    assert read_partition(artifact).num_clients == 20
    output = " ".join(result.output.split())  # undo rich's line wrapping
    for text in ("mean TV distance", "mean JS distance", "mean effective classes", "6/20 clients", artifact.name):
        assert text in output
    again = _invoke(ws, "--alpha", "0.5", "--missing", "0.3", "--quiet")
    assert again.exit_code == 0 and again.output == ""


def test_help_documents_the_options():
    result = runner.invoke(app, ["partition", "--help"])
    assert result.exit_code == 0
    for option in ("--alpha", "--iid", "--by", "--clients", "--min-samples", "--missing", "--missing-level",
                   "--missing-modality", "--seed", "--dataset", "--quiet"):
        assert option in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--alpha", "0"], "--alpha must be > 0"),
    (["--alpha", "-1"], "--alpha must be > 0"),
    (["--alpha", "nan"], "--alpha must be > 0"),
    (["--clients", "0"], "--clients must be at least 1"),
    (["--clients", "61"], "more than the 60 training samples"),
    (["--iid", "--clients", "40"], "lower --clients or --min-samples"),
    (["--alpha", "0.01", "--clients", "25", "--min-samples", "2"], "raise --alpha"),
    (["--missing", "1.5"], "must lie in [0, 1]"),
    (["--missing", "-0.1"], "must lie in [0, 1]"),
    (["--missing", "0.3", "--missing-modality", "text"], "use one of audio, visual"),
    (["--missing", "0.3", "--missing-modality", "audio,visual"], "would leave nothing"),
    (["--missing", "0.3", "--missing-modality", "audio", "--missing-modality", "visual"], "would leave nothing"),
    (["--missing", "0.3", "--missing-modality", "audio,"], "--missing-modality needs modality names"),
    (["--by", "speaker"], "not a group column"),
    (["--by", "group", "--clients", "5"], "--clients 4 or fewer"),
    (["--by", "group", "--alpha", "0.5"], "give only one of them"),
    (["--dataset", "nope"], "no dataset named 'nope'"),
])
def test_errors_exit_2_and_write_nothing(tmp_path, args, message):
    ws = Workspace(tmp_path)
    make_dataset(ws)  # 60 train samples, 2 modalities, 4 groups
    result = _invoke(ws, *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not ws.kind_dir("partition").exists()


def test_missing_on_a_one_modality_dataset_is_an_error(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws, specs=DEFAULT_SPECS[:1])
    result = _invoke(ws, "--missing", "0.3")
    assert result.exit_code == 2 and "needs a multimodal dataset" in result.output
    assert not ws.kind_dir("partition").exists()
    assert _invoke(ws, "--clients", "3", "-q").exit_code == 0  # without --missing it partitions


def test_no_dataset_names_cmi_prepare(tmp_path):
    result = _invoke(Workspace(tmp_path))
    assert result.exit_code == 2 and "cmi prepare" in result.output
    assert not (tmp_path / "partitions").exists()


def test_name_clash_with_other_parameters_needs_force(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws)
    assert _invoke(ws, "--clients", "3", "--name", "mine", "-q").exit_code == 0
    clash = _invoke(ws, "--clients", "4", "--name", "mine", "-q")
    assert clash.exit_code == 2 and "--force" in clash.output
    assert read_partition(ws.resolve("partition", "mine")).num_clients == 3
    assert _invoke(ws, "--clients", "4", "--name", "mine", "--force", "-q").exit_code == 0
    assert read_partition(ws.resolve("partition", "mine")).num_clients == 4


def test_three_modalities_lose_a_set_given_repeated_or_comma_separated(tmp_path):
    ws = Workspace(tmp_path)
    make_dataset(ws, specs=(*DEFAULT_SPECS, ModalitySpec("gyro", "sequence", (6, 4), "float32")),
                 per_class={"train": 30, "val": 2, "test": 2})
    result = runner.invoke(app, ["--workspace", str(ws.root), "partition", "--clients", "6", "--missing", "0.5",
                                 "--missing-modality", "gyro", "--missing-modality", "audio"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    artifact = ws.resolve("partition")
    assert artifact.name == "toy-dir0.5-c6-m0.5-lose-audio+gyro-s0"
    output = " ".join(result.output.split())
    assert "3/6 clients hold fewer modalities (3 without audio+gyro)" in output
    assert "with gyro" in output and output.count("visual only") == 3
    again = _invoke(ws, "--clients", "6", "--missing", "0.5", "--missing-modality", "audio,gyro")
    assert again.exit_code == 0 and "unchanged (identical partition exists)" in " ".join(again.output.split())
    drawn = _invoke(ws, "--clients", "6", "--missing", "0.5", "--missing-level", "sample")
    assert drawn.exit_code == 0, drawn.output
    assert "by lost set: " in " ".join(drawn.output.split())
