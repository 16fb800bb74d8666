"""Images (CrisisMMD): decode with Pillow, upright per EXIF, RGB, square; optional pretrained
embeddings from a local transformers image model (``--image-model``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.extractors import MediaError
from pipelines.extractors.media import check_file
from pipelines.extractors.visual import resize_center_crop

#: transparent pixels are composited onto this colour (tweets' PNG screenshots and logos)
BACKGROUND = (255, 255, 255)


def load_image(path, image_size: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB: ``path`` (jpg, png, any Pillow format) turned upright following its
    EXIF orientation, converted from any mode to RGB (transparency over white, 16-bit grey
    scaled to 8 bits), shorter side resized to ``image_size`` and centre-cropped. Raises
    MediaError for a missing, empty, truncated or unreadable file."""
    path = Path(path)
    check_file(path)
    try:
        with Image.open(path) as image:
            # JPEG only: decode at the smallest DCT scale that still covers the requested size
            image.draft("RGB", (image_size, image_size))
            pixels = np.asarray(_to_rgb(ImageOps.exif_transpose(image)))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"unreadable image {path}: {exc}") from exc
    return resize_center_crop(pixels[None], image_size)[0]


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit greyscale (PNG): scale to 8 bits rather than clip
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class ImageEncoder:
    """Pretrained image embeddings from a local transformers model directory (a model and its
    image processor saved with ``save_pretrained``; ``--image-model PATH``). ``dim`` is the
    embedding size: ``pooler_output`` when the model has one, else the mean of its last hidden
    state over patches or feature-map positions. torch and transformers are imported here, not
    with the module: preparing pixels never pays for them."""

    def __init__(self, model_dir, device: str = "cpu", batch_size: int = 32) -> None:
        import torch

        from pipelines.extractors.pretrained import load_local

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.processor, self.model = load_local(model_dir, "--image-model", "AutoImageProcessor")
        self.model.eval().to(self.device)
        self.dim = int(self.embed(np.zeros((1, 32, 32, 3), np.uint8)).shape[1])

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) RGB -> float32 (N, dim), ``batch_size`` images per forward pass."""
        import torch

        from pipelines.extractors.pretrained import pool

        batches = []
        for first in range(0, len(images), self.batch_size):
            inputs = self.processor(images=list(images[first : first + self.batch_size]), return_tensors="pt")
            with torch.inference_mode():
                output = self.model(pixel_values=inputs["pixel_values"].to(self.device))
            batches.append(pool(output).cpu().numpy())
        return np.concatenate(batches) if batches else np.zeros((0, self.dim), np.float32)
