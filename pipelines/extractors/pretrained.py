"""Loading a pretrained transformers encoder from a local directory, and pooling its output to
one vector per input. Shared by the text and image encoders; never downloads anything."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from transformers.utils import logging as transformers_logging

from pipelines.errors import CmiError

def load_local(model_dir, option: str, companion: str) -> tuple[object, object]:
    """(companion, model) loaded from a model directory given with ``option``: ``companion`` is
    the name of the transformers Auto class saved beside the model (``AutoTokenizer``,
    ``AutoImageProcessor``), the model comes from ``AutoModel``; local files only. A CmiError
    says how to supply a directory when it is missing, is not a saved model, or fails to load."""
    import transformers

    path = Path(model_dir).expanduser()
    how = (
        f"{option} takes a directory written by save_pretrained, e.g. on a machine with internet: "
        f"AutoModel.from_pretrained(NAME).save_pretrained(DIR) and the matching "
        f"{companion}.from_pretrained(NAME).save_pretrained(DIR); copy DIR here and pass {option} DIR "
        "(cmi never downloads models)"
    )
    if not path.is_dir():
        raise CmiError(f"{option} {path}: no such directory. {how}")
    if not (path / "config.json").is_file():
        raise CmiError(f"{option} {path}: not a saved transformers model (no config.json). {how}")
    try:
        with _quiet_transformers():
            return (getattr(transformers, companion).from_pretrained(path, local_files_only=True),
                    transformers.AutoModel.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CmiError(f"{option} {path}: cannot load the model ({exc}). {how}") from exc


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading bars and notices (they would break prepare's progress bar)."""
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def pool(output, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One float32 vector per input: the model's ``pooler_output`` when it has one, else the mean
    of ``last_hidden_state`` over tokens (only the unmasked ones) or over a CNN's feature map."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1).float()
    hidden = output.last_hidden_state.float()
    if hidden.ndim == 4:  # (N, C, H, W) feature map
        return hidden.mean(dim=(2, 3))
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
