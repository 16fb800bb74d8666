"""Text (CrisisMMD tweets): cleaning, and embeddings from a local transformers text encoder
(``--text-model PATH``; never a hub download)."""

from __future__ import annotations

import html
import re

import numpy as np

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
# UTF-8 text misread as Windows-1252 (or, for the five bytes cp1252 leaves undefined, as Latin-1,
# which turns them into C1 control characters): each misread byte -> the character it became
_MISREAD = {b: bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(128, 256)}
_BYTE_OF = {ord(char): chr(b) for b, char in _MISREAD.items()}


def _misread(first: int, last: int) -> str:
    return "[" + "".join(re.escape(_MISREAD[b]) for b in range(first, last + 1)) + "]"


_CONT = _misread(0x80, 0xBF)
# one misread multi-byte UTF-8 sequence: a lead byte then its continuation bytes
_MOJIBAKE = re.compile(
    f"{_misread(0xC2, 0xDF)}{_CONT}|{_misread(0xE0, 0xEF)}{_CONT}{{2}}|{_misread(0xF0, 0xF4)}{_CONT}{{3}}"
)

# a misread no-break space (C2 A0) whose second byte was later normalised to a plain space
_LONE_NBSP_LEAD = re.compile(r"Â(?=\s)")


def clean_text(text: str) -> str:
    """A tweet ready for a tokenizer: HTML entities unescaped (``&amp;`` and ``&amp;amp;`` ->
    ``&``), UTF-8 text that was misread as Windows-1252/Latin-1 repaired where it decodes back
    cleanly (``â€™`` -> ``’``, ``Ã©`` -> ``é``, ``Â `` -> `` ``), URLs removed, whitespace
    collapsed to single spaces."""
    text = _LONE_NBSP_LEAD.sub("", _MOJIBAKE.sub(_repair_mojibake, _unescape_html(text)))
    return _WHITESPACE.sub(" ", _URL.sub(" ", text)).strip()


def _unescape_html(text: str) -> str:
    """html.unescape until stable: some tweets were escaped twice (``&amp;amp;``)."""
    for _ in range(3):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return text


def _repair_mojibake(match: re.Match) -> str:
    sequence = match.group(0)
    try:
        return sequence.translate(_BYTE_OF).encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:  # not a valid UTF-8 sequence after all (e.g. an overlong form)
        return sequence


class TextEncoder:
    """Sentence embeddings from a local transformers encoder directory (model and tokenizer saved
    with ``save_pretrained``; ``--text-model PATH``). Texts are truncated to ``max_length``
    tokens; ``dim`` is the embedding size: ``pooler_output`` when the model has one (BERT),
    else the attention-masked mean of its last hidden state. torch and transformers are imported
    here, not with the module: :func:`clean_text` alone never pays for them."""

    def __init__(self, model_dir, max_length: int = 40, batch_size: int = 64, device: str = "cpu") -> None:
        import torch

        from pipelines.extractors.pretrained import load_local

        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tokenizer, self.model = load_local(model_dir, "--text-model", "AutoTokenizer")
        self.model.eval().to(self.device)
        self.dim = int(self.embed([""]).shape[1])

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 (N, dim) for N texts, ``batch_size`` per forward pass."""
        import torch

        from pipelines.extractors.pretrained import pool

        batches = []
        for first in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                list(texts[first : first + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                batches.append(pool(self.model(**tokens), tokens["attention_mask"]).cpu().numpy())
        return np.concatenate(batches) if batches else np.zeros((0, self.dim), np.float32)
