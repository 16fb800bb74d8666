"""Training configuration: one dataclass tree, filled from defaults, a TOML file and overrides.

Keys are dotted names: top-level settings (``rounds``, ``method``...), ``model.<field>``
(:class:`pipelines.models.ModelConfig`), ``train.<field>`` (:class:`pipelines.fl.TrainConfig`) and
``<method>.<field>`` for every method's ``Hparams`` (e.g. ``fedcmi.kappa``). A TOML file writes
the same keys as tables::

    method = "fedcmi"
    rounds = 20
    [train]
    lr = 0.01
    [fedcmi]
    kappa = 1.5

Sections of methods other than the chosen one are validated but not used, so one file can
hold the settings of every method compared. An unknown key or a value of the wrong type is a
:class:`CmiError` that lists the valid keys.

A config file may also say where the run trains (:data:`LOCATION_KEYS`): ``partition = "NAME"``
and ``dataset = "NAME"`` (the dataset that partition must come from). Every run directory holds a
``config.toml`` with both and every setting spelled out (:func:`config_toml`), so
``cmi train --config runs/<run>/config.toml`` repeats the run; a run's ``config.json`` is read too
(its location then comes from the run's manifest beside it).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

import tomli_w

from pipelines.artifacts import MANIFEST_NAME, ArtifactError, fingerprint, load_artifact
from pipelines.errors import CmiError
from pipelines.fl import METHODS, TrainConfig
from pipelines.models import ModelConfig

DEVICES = ("auto", "cpu", "cuda")

#: The CPU-quick training defaults of a bare `cmi train`: on the README's synthetic demo (348 train
#: clips over 20 clients, ~17 per client) small batches and 5 local epochs give each client enough
#: SGD steps per round for 20 rounds to learn; about a minute on 2 cores.
DEFAULT_TRAIN = TrainConfig(lr=0.02, momentum=0.9, weight_decay=1e-4, local_epochs=5, batch_size=8)


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a training run computes (see the module docstring for keys).

    ``hparams`` is an instance of ``METHODS[method].Hparams``; it is written under the
    method's own name (``fedcmi.kappa``), never as a key called ``hparams``.

    ``eval_every``: rounds between evaluations (the last round is always evaluated).
    ``eval_train_every``: an evaluated round also evaluates on every client's training rows
    (``client_accuracy``, the ``clients-*.parquet`` predictions) when it is a multiple of this,
    the last round, or a new best on validation; None: every evaluated round.
    """

    method: str = "fedcmi"
    engine: str = "local"
    rounds: int = 20
    clients_per_round: int = 5
    eval_every: int = 1
    eval_train_every: int | None = None
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 256
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = DEFAULT_TRAIN
    hparams: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as nested plain data (what `config.json` holds)."""
        out = {name: getattr(self, name) for name in _TOP_LEVEL}
        out["model"] = dataclasses.asdict(self.model)
        out["train"] = dataclasses.asdict(self.train)
        out[self.method] = dataclasses.asdict(self.hparams)
        return out

    def identity(self) -> str:
        """A short hash of what the run computes (the device does not count)."""
        body = self.to_dict()
        body.pop("device")
        if body["eval_train_every"] is None:   # so runs started before the setting existed keep their identity
            body.pop("eval_train_every")
        return fingerprint(body)[:8]


_SECTIONS = ("model", "train", "hparams")
_TOP_LEVEL = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in _SECTIONS)


def _engine_names() -> tuple[str, ...]:
    from pipelines.engines import ENGINES  # late: engines import this module

    return tuple(ENGINES)


#: key -> (predicate, what the value must be); checked after type coercion. Model, train and
#: method settings are checked by their own dataclasses.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "method": (lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
    "engine": (lambda v: v in _engine_names(), "one of the engines (`cmi train --help` lists them)"),
    "device": (lambda v: v in DEVICES, f"one of {', '.join(DEVICES)}"),
    "rounds": (lambda v: v >= 1, "an integer >= 1"),
    "clients_per_round": (lambda v: v >= 1, "an integer >= 1"),
    "eval_every": (lambda v: v >= 1, "an integer >= 1"),
    "eval_train_every": (lambda v: v is None or v >= 1, "an integer >= 1 (or none: every evaluated round)"),
    "eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def config_keys() -> dict[str, Any]:
    """Every valid dotted key -> its type."""
    keys = {name: hint for name, hint in _field_types(RunConfig).items() if name in _TOP_LEVEL}
    keys.update({f"model.{n}": h for n, h in _field_types(ModelConfig).items()})
    keys.update({f"train.{n}": h for n, h in _field_types(TrainConfig).items()})
    for name, method in METHODS.items():
        keys.update({f"{name}.{n}": h for n, h in _field_types(method.Hparams).items()})
    return keys


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables -> dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from ``--set``: VALUE is read as a TOML value (``1.5``, ``true``, ``"x"``),
    else taken as a bare string (``model.encoder=resnet18``)."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise CmiError(f"--set expects KEY=VALUE (e.g. --set fedcmi.kappa=1.5), got {text!r}.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


#: keys of a config file that say where a run trains, not what it computes
LOCATION_KEYS = ("partition", "dataset")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as dotted keys, validated later by :func:`resolve_config` (see
    :func:`split_location` for the location keys it may hold): TOML, or JSON such as a run's
    ``config.json``, whose partition and dataset then come from the run manifest beside it."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            values = flatten(json.loads(path.read_text(encoding="utf-8")))
            return {**_run_location(path.parent), **values}
        with open(path, "rb") as fh:
            return flatten(tomllib.load(fh))
    except FileNotFoundError:
        raise CmiError(f"config file {path} does not exist; pass an existing TOML file "
                       "(or a run's config.toml / config.json) to --config.") from None
    except IsADirectoryError:
        raise CmiError(f"{path} is a directory; pass a file to --config (a run's is {path}/config.toml).") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise CmiError(f"config file {path} is not valid {kind} ({exc}); fix the file.") from None


def _run_location(directory: Path) -> dict[str, Any]:
    """The partition and dataset of the run in ``directory``; nothing when it holds no run."""
    if not (directory / MANIFEST_NAME).is_file():
        return {}
    try:
        manifest = load_artifact(directory, "run").manifest
    except ArtifactError:
        return {}
    return {key: manifest[key] for key in LOCATION_KEYS if manifest.get(key)}


def split_location(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Dotted config-file ``values`` -> (settings for :func:`resolve_config`, location): the
    location holds the :data:`LOCATION_KEYS` present, each a name (a CmiError otherwise)."""
    settings = {k: v for k, v in values.items() if k not in LOCATION_KEYS}
    location = {k: values[k] for k in LOCATION_KEYS if k in values}
    for key, value in location.items():
        if not isinstance(value, str) or not value:
            raise _bad_value(key, value, f"the name of a {key} in the workspace")
    return settings, location


def config_toml(config: RunConfig, *, partition: str, dataset: str, header: str = "") -> str:
    """The text of a run's ``config.toml``: ``header`` as comment lines, the run's location and
    every setting of ``config`` spelled out (a None as ``"none"``), so that the file reproduces
    the run whatever the defaults of a later cmi are; :func:`read_config_file` and
    :func:`resolve_config` read it back to an equal config."""
    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return "none" if value is None else value

    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = tomli_w.dumps(plain({"partition": partition, "dataset": dataset, **config.to_dict()}))
    return comments + body


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` or a CmiError (ints are accepted for floats, nothing else is
    converted silently)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0]) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            raise _bad_value(key, value, f"one of {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _bad_value(key, value, "a list")
        item = args[0] if args else Any
        return tuple(_coerce(key, v, item) for v in value) if origin is tuple else [_coerce(key, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _bad_value(key, value, "true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad_value(key, value, "an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _bad_value(key, value, "a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _bad_value(key, value, "a string")
    return value


def _bad_value(key: str, value: Any, expected: str) -> CmiError:
    return CmiError(
        f"config key {key!r} must be {expected}, got {value!r}; fix it in the --config file "
        f"or with --set {key}=VALUE."
    )


def _unknown_key(key: str, keys: Mapping[str, Any]) -> CmiError:
    close = difflib.get_close_matches(key, list(keys), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return CmiError(
        f"unknown config key {key!r}{hint}. Valid keys: {', '.join(keys)}. "
        "Set them in the --config TOML file or with --set KEY=VALUE."
    )


def _build(cls: type, key_prefix: str, values: Mapping[str, Any], base: Any = None) -> Any:
    """An instance of dataclass ``cls`` from ``base`` (or its defaults) updated with the
    ``key_prefix``-keys of ``values``; the class's own validation errors become CmiErrors."""
    chosen = {k[len(key_prefix):]: v for k, v in values.items() if k.startswith(key_prefix)}
    try:
        return dataclasses.replace(base, **chosen) if base is not None else cls(**chosen)
    except (ValueError, TypeError) as exc:
        keys = ", ".join(key_prefix + k for k in chosen) or f"{key_prefix}*"
        raise CmiError(f"invalid settings ({keys}): {exc}; fix them in the --config file or with --set.") from None


def resolve_config(*layers: Mapping[str, Any]) -> RunConfig:
    """Merge layers of settings (nested tables or dotted keys; later layers win) over the
    defaults and validate them into a :class:`RunConfig`."""
    keys = config_keys()
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in flatten(layer).items():
            if key not in keys:
                raise _unknown_key(key, keys)
            values[key] = _coerce(key, value, keys[key])
    for key, (ok, expected) in _CHECKS.items():
        if key in values and not ok(values[key]):
            raise _bad_value(key, values[key], expected)
    method = values.get("method", RunConfig.method)
    # Validate every method section given, so a typo in an unused section is not silent.
    hparams = {name: _build(METHODS[name].Hparams, f"{name}.", values) for name in METHODS
               if name == method or any(k.startswith(f"{name}.") for k in values)}
    top = {k: v for k, v in values.items() if k in _TOP_LEVEL}
    return RunConfig(
        **top,
        model=_build(ModelConfig, "model.", values),
        train=_build(TrainConfig, "train.", values, base=DEFAULT_TRAIN),
        hparams=hparams[method],
    )
