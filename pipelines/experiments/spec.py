"""An experiment file (or the options of `cmi experiment run`) and its expansion into cells.

An experiment file is a `cmi train --config` file (its settings are the base of every cell)
with two more tables, after the base settings (in TOML a key belongs to the table above it)::

    rounds = 10                                 # base settings, as in `cmi train --config`
    [train]
    local_epochs = 2

    [experiment]
    name = "synthetic-baselines"                # default: the file name without .toml
    methods = ["fedavg", "fedprox", "fedcmi"]   # default: the base config's method
    seeds = [0, 1, 2]                           # default: the base config's seed
    partitions = ["synthetic-dir0.5-c20-m0.3-s0"]   # default: the latest partition

    [grid]                                      # config key -> the values to try
    "fedcmi.kappa" = [1, 2, 4]
    "train.lr" = [0.01, 0.02]

It expands to partitions x methods x (grid values) x seeds cells, in that order. A grid key of a
method's own section (``fedcmi.kappa``) varies only that method's cells; any other key varies
every cell. Each cell is a run named ``<experiment>-<method>[-<partition>][-<key>=<value>...]-s<seed>``
(the partition only when there are several; ``<key>`` is the key's last part unless two grid keys
share it), the same on every expansion of the same experiment.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

import tomli_w

from pipelines.artifacts import Artifact, Workspace, fingerprint
from pipelines.errors import CmiError
from pipelines.experiments.record import Cell
from pipelines.fl import METHODS
from pipelines.training.config import (
    RunConfig, config_keys, flatten, parse_assignment, read_config_file, resolve_config, split_location,
)

EXPERIMENT_KEYS = ("name", "methods", "seeds", "partitions", "partition")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


@dataclass(frozen=True)
class ExperimentSpec:
    """What an experiment runs. ``partitions`` empty means: those the experiment ran on before,
    else the latest; ``grid`` maps a dotted config key to its values; ``base`` holds the dotted
    settings every cell shares; ``dataset``, when set, is the dataset the partitions must come from."""

    name: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    partitions: tuple[str, ...] = ()
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None

    def params(self) -> dict[str, Any]:
        """The experiment manifest's params (the cells are added by the runner)."""
        return {"name": self.name, "methods": list(self.methods), "seeds": list(self.seeds),
                "partitions": list(self.partitions), "grid": {k: list(v) for k, v in self.grid.items()},
                "base": dict(self.base), "dataset": self.dataset}

    def to_toml(self, header: str = "") -> str:
        """This spec as an experiment file (``header`` as comment lines) that reads back equal."""
        experiment: dict[str, Any] = {"name": self.name, "methods": list(self.methods), "seeds": list(self.seeds)}
        if self.partitions:
            experiment["partitions"] = list(self.partitions)
        body: dict[str, Any] = dict(self.base)   # dotted keys stay quoted keys, which read back the same
        if self.dataset:
            body["dataset"] = self.dataset
        body["experiment"] = experiment
        if self.grid:
            body["grid"] = {k: list(v) for k, v in self.grid.items()}
        comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
        return comments + tomli_w.dumps(body)


@dataclass(frozen=True)
class PlannedCell:
    """A cell of an expanded experiment with its resolved config and partition artifact."""

    cell: Cell
    config: RunConfig
    partition: Artifact


def read_experiment_file(path: str | Path) -> dict[str, Any]:
    """An experiment file's parts, unvalidated: ``{"experiment": {...}, "grid": {...}, "base":
    {dotted settings, location keys included}}``."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise CmiError(f"experiment file {path} does not exist; pass an existing TOML file "
                       "(see examples/experiment-synthetic.toml).") from None
    except IsADirectoryError:
        raise CmiError(f"{path} is a directory; pass an experiment file (TOML).") from None
    except tomllib.TOMLDecodeError as exc:
        raise CmiError(f"experiment file {path} is not valid TOML ({exc}); fix the file.") from None
    experiment, grid = data.pop("experiment", {}), data.pop("grid", {})
    if not isinstance(experiment, dict) or not isinstance(grid, dict):
        raise CmiError(f"{path}: [experiment] and [grid] must be tables; see examples/experiment-synthetic.toml.")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise CmiError(f"{path}: grid key {key!r} = {values!r} is not a list of values. Base settings go before "
                           "the [experiment] and [grid] tables (a TOML key belongs to the table above it).")
    return {"experiment": experiment, "grid": grid, "base": flatten(data)}


def build_spec(
    file: str | Path | None = None, *, name: str | None = None, methods: Sequence[str] = (),
    seeds: Sequence[int] = (), partitions: Sequence[str] = (), grid: Sequence[str] = (),
    config: str | Path | None = None, settings: Mapping[str, Any] | None = None,
) -> ExperimentSpec:
    """The experiment of ``file`` (an experiment file, optional) changed by options: ``methods``,
    ``seeds``, ``partitions`` replace the file's; ``grid`` entries (``KEY=V1,V2`` or
    ``KEY=[V1, V2]``) add or replace grid keys; the base settings are ``config`` (a `cmi train
    --config` file), then the file's, then ``settings`` (dotted keys). Everything is validated
    here (every cell's config too, by :func:`expand`), so a mistake stops the experiment before
    any cell runs."""
    parts = read_experiment_file(file) if file else {"experiment": {}, "grid": {}, "base": {}}
    exp = parts["experiment"]
    unknown = sorted(set(exp) - set(EXPERIMENT_KEYS))
    if unknown:
        raise CmiError(f"unknown key(s) {', '.join(unknown)} in [experiment]; valid: {', '.join(EXPERIMENT_KEYS)}.")
    base_layers = [read_config_file(config) if config else {}, parts["base"], dict(settings or {})]
    base: dict[str, Any] = {}
    for layer in base_layers:
        base.update(layer)
    base, location = split_location(base)
    base_config = resolve_config(base)   # the base alone must be valid
    for key in ("method", "seed"):
        base.pop(key, None)

    chosen_methods = tuple(methods) or tuple(_list(exp, "methods", str)) or (base_config.method,)
    chosen_seeds = tuple(seeds) or tuple(_list(exp, "seeds", int)) or (base_config.seed,)
    if "partition" in exp and "partitions" in exp:
        raise CmiError("[experiment] has both partition and partitions; keep one.")
    file_partitions = _list(exp, "partitions", str) or ([exp["partition"]] if "partition" in exp else [])
    chosen_partitions = tuple(partitions) or tuple(file_partitions) or \
        ((location["partition"],) if "partition" in location else ())
    for method in chosen_methods:
        if method not in METHODS:
            raise CmiError(f"unknown method {method!r} in the experiment; choose among {', '.join(METHODS)}.")
    _unique("methods", chosen_methods)
    _unique("seeds", chosen_seeds)
    _unique("partitions", chosen_partitions)

    chosen_grid = {key: _grid_values(key, values) for key, values in parts["grid"].items()}
    for entry in grid:
        key, value = parse_assignment(entry)
        chosen_grid[key] = _grid_values(key, _split_values(value))
    _check_grid(chosen_grid, chosen_methods)

    chosen_name = name or exp.get("name") or (Path(file).stem if file else None)
    spec = ExperimentSpec(chosen_name or "", chosen_methods, chosen_seeds, chosen_partitions, chosen_grid, base,
                          location.get("dataset"))
    if not chosen_name:
        spec = dataclasses.replace(spec, name=f"experiment-{fingerprint(spec.params())[:6]}")
    if not isinstance(spec.name, str) or not _NAME.match(spec.name):
        raise CmiError(f"experiment name {spec.name!r} is not usable as a folder name; use letters, digits and "
                       ". _ + = - (--name or name = ... in [experiment]).")
    return spec


def expand(spec: ExperimentSpec, workspace: Workspace, recorded_partitions: Sequence[str] = ()) -> list[PlannedCell]:
    """Every cell of ``spec`` (module docstring), its config validated. The partitions are the
    spec's, else ``recorded_partitions`` (those of an earlier run of the experiment), else the
    workspace's latest."""
    refs: Sequence[str | None] = spec.partitions or recorded_partitions or (None,)
    artifacts = [workspace.resolve("partition", ref) for ref in refs]
    if spec.dataset:
        for artifact in artifacts:
            if artifact.manifest.get("dataset") != spec.dataset:
                raise CmiError(f"partition {artifact.name} was made from dataset {artifact.manifest.get('dataset')}, "
                               f"not {spec.dataset}; name partitions of {spec.dataset} in the experiment.")
    labels = _labels(list(spec.grid))
    planned: list[PlannedCell] = []
    for artifact in artifacts:
        for method in spec.methods:
            keys = [key for key in spec.grid if _applies(key, method)]
            for combo in itertools.product(*(spec.grid[key] for key in keys)):
                overrides = dict(zip(keys, combo))
                for seed in spec.seeds:
                    config = resolve_config(spec.base, {"method": method, "seed": seed}, overrides)
                    parts = [spec.name, method] + ([artifact.name] if len(artifacts) > 1 else [])
                    parts += [f"{labels[key]}={_value_text(value)}" for key, value in overrides.items()]
                    run = "-".join(parts + [f"s{seed}"])
                    planned.append(PlannedCell(Cell(run, method, seed, artifact.name, overrides), config, artifact))
    names = [p.cell.run for p in planned]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CmiError(f"the experiment gives several cells the run name(s) {', '.join(repeated)} (a grid value "
                       "repeated, or values that read the same); make the grid values distinct.")
    return planned


# ---------------------------------------------------------------------------- helpers


def _list(table: Mapping[str, Any], key: str, kind: type) -> list[Any]:
    if key not in table:
        return []
    values = table[key]
    if not isinstance(values, list) or not values or \
            not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
        raise CmiError(f"[experiment] {key} must be a non-empty list of {kind.__name__}s, got {values!r}.")
    return values


def _unique(what: str, values: Sequence[Any]) -> None:
    if len(set(values)) != len(values):
        raise CmiError(f"the experiment's {what} repeat a value ({list(values)}); list each once.")


def _split_values(value: Any) -> Any:
    """A ``--grid KEY=1,2,4`` value: a comma-separated string becomes a list of TOML values."""
    if isinstance(value, str) and "," in value:
        return [parse_assignment(f"v={item}")[1] for item in value.split(",")]
    return value


def _grid_values(key: str, values: Any) -> tuple[Any, ...]:
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise CmiError(f"grid key {key!r} has no values; give a list such as [1, 2, 4].")
    return tuple(values)


def _check_grid(grid: Mapping[str, tuple], methods: Sequence[str]) -> None:
    keys = config_keys()
    for key in grid:
        if key in ("method", "seed"):
            raise CmiError(f"{key!r} cannot be a grid key; list them as {key}s = [...] in [experiment] "
                           f"(or --{'method' if key == 'method' else 'seeds'}).")
        if key not in keys:
            raise CmiError(f"unknown grid key {key!r}; grid keys are config keys ({', '.join(keys)}).")
        section = key.split(".", 1)[0]
        if section in METHODS and section not in methods:
            raise CmiError(f"grid key {key!r} is a setting of method {section}, which the experiment does not run; "
                           f"add {section} to its methods or drop the key.")


def _applies(key: str, method: str) -> bool:
    section = key.split(".", 1)[0]
    return section not in METHODS or section == method


def _labels(keys: list[str]) -> dict[str, str]:
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: (short if last.count(short) == 1 else key) for key, short in zip(keys, last)}


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = format(value, "g")
    elif isinstance(value, (list, tuple)):
        text = "+".join(_value_text(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)
