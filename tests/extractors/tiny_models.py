"""Tiny transformers encoders for tests, built from scratch and saved with save_pretrained
(nothing downloaded). Weights are seeded without touching the global torch RNG."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast, ViTConfig, ViTModel
from transformers.models.vit import ViTImageProcessorPil

HIDDEN = 32
WORDS = ["the", "flood", "fire", "earthquake", "hurricane", "damage", "help", "people", "water", "house"]


def _seeded(build, seed: int):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def save_tiny_bert(model_dir, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden size 32, with pooler) and its WordPiece tokenizer (lower case, a
    vocabulary of letters, digits, punctuation, ##letters and a few crisis words) in ``model_dir``."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + list(string.ascii_lowercase + string.digits + string.punctuation)
        + ["##" + char for char in string.ascii_lowercase + string.digits]
        + WORDS
    )
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(model_dir, local_files_only=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    _seeded(lambda: BertModel(config), seed).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def save_tiny_vit(model_dir, seed: int = 0, image_size: int = 32) -> Path:
    """A 2-layer ViT (hidden size 32, 8-pixel patches, with pooler) and its image processor
    (resize to ``image_size``, normalise to [-1, 1]) in ``model_dir``."""
    model_dir = Path(model_dir)
    config = ViTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    _seeded(lambda: ViTModel(config), seed).save_pretrained(model_dir)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(model_dir)
    return model_dir
