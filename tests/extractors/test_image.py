"""Images: EXIF orientation, modes to RGB, resizing, rejects, and the local image encoder."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import CmiError
from pipelines.extractors import MediaError
from pipelines.extractors.image import ImageEncoder, load_image
from tests.extractors.tiny_models import HIDDEN, save_tiny_vit

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def close_to(pixel, colour, tolerance=40) -> bool:
    return bool(np.abs(np.asarray(pixel, int) - colour).max() <= tolerance)


def halves(width: int, height: int, left, right, mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, (width, height), left)
    image.paste(right, (width // 2, 0, width, height))
    return image


def test_exif_rotated_photo_comes_out_upright(tmp_path):
    # stored landscape 40x20, left red / right blue; orientation 6 = display rotated 90 deg
    # clockwise: upright it is a 20x40 portrait, red on top, blue below
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    halves(40, 20, RED, BLUE).save(path, exif=exif, quality=95)
    out = load_image(path, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    # the centre 20x20 of the portrait: rows 10..30, i.e. the lower part of red then upper blue
    assert close_to(out[3, 10], RED) and close_to(out[16, 10], BLUE)
    assert close_to(out[10, 3], out[10, 16], tolerance=60)  # no left/right split any more


def test_png_with_alpha_over_white(tmp_path):
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # transparent black
    image.paste((255, 0, 0, 255), (0, 0, 8, 16))  # opaque red left half
    image.save(tmp_path / "logo.png")
    out = load_image(tmp_path / "logo.png", 16)
    np.testing.assert_array_equal(out[:, :8], np.broadcast_to(RED, (16, 8, 3)))
    np.testing.assert_array_equal(out[:, 8:], np.broadcast_to(WHITE, (16, 8, 3)))


def test_palette_png_with_transparency_and_greyscale(tmp_path):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 255, 0] + [0, 0, 255] * 255)
    palette.paste(1, (4, 0, 8, 8))
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 (green) is transparent
    out = load_image(tmp_path / "p.png", 8)
    np.testing.assert_array_equal(out[:, :4], np.broadcast_to(WHITE, (8, 4, 3)))
    np.testing.assert_array_equal(out[:, 4:], np.broadcast_to(BLUE, (8, 4, 3)))
    Image.new("L", (10, 10), 77).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png", 10), np.full((10, 10, 3), 77, np.uint8))


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 256 * 100, 65535]], np.uint16)).save(tmp_path / "scan.png")
    out = load_image(tmp_path / "scan.png", 3)  # upscaled 1x3 -> 3x3 from the middle pixel
    np.testing.assert_array_equal(out[1, 1], [100, 100, 100])


def test_cmyk_jpeg_is_converted(tmp_path):
    Image.new("CMYK", (12, 12), (0, 255, 255, 0)).save(tmp_path / "print.jpg")  # CMYK red
    assert close_to(load_image(tmp_path / "print.jpg", 12)[6, 6], RED)


def test_large_jpeg_reduced_decoding_matches_full_decoding(tmp_path):
    x = np.linspace(0, 255, 1600)
    y = np.linspace(0, 255, 1200)[:, None]
    pixels = np.stack(np.broadcast_arrays(x[None, :] + 0 * y, y + 0 * x[None, :], 128 + 0 * y * x), -1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    fast = load_image(tmp_path / "big.jpg", 64)
    with Image.open(tmp_path / "big.jpg") as image:  # no draft: full-size decode, then resize
        full = np.asarray(image.convert("RGB").crop((200, 0, 1400, 1200)).resize((64, 64), Image.BOX))
    assert np.abs(fast.astype(int) - full).mean() < 3


# ---------------------------------------------------------------- rejects


def test_missing_zero_byte_truncated_and_garbage(tmp_path):
    with pytest.raises(MediaError, match="missing file"):
        load_image(tmp_path / "data_image" / "gone.jpg", 32)
    (tmp_path / "zero.jpg").touch()
    with pytest.raises(MediaError, match="empty file"):
        load_image(tmp_path / "zero.jpg", 32)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="unreadable image .*cut.jpg.*truncated"):
        load_image(tmp_path / "cut.jpg", 32)
    (tmp_path / "text.jpg").write_text("<html>not found</html>")
    with pytest.raises(MediaError, match="unreadable image"):
        load_image(tmp_path / "text.jpg", 32)


# ---------------------------------------------------------------- encoder


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("vit"))


def test_encoder_shape_determinism_and_batching(tiny_vit):
    images = np.random.default_rng(3).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    encoder = ImageEncoder(tiny_vit, batch_size=2)
    assert encoder.dim == HIDDEN
    first = encoder.embed(images)
    assert first.shape == (5, HIDDEN) and first.dtype == np.float32
    np.testing.assert_array_equal(first, encoder.embed(images))
    np.testing.assert_allclose(ImageEncoder(tiny_vit, batch_size=32).embed(images), first, atol=1e-5)
    assert np.abs(first[0] - first[1]).max() > 1e-3  # different images, different vectors
    assert encoder.embed(images[:0]).shape == (0, HIDDEN)


def test_missing_or_unsaved_model_dir_explains_the_option(tmp_path):
    with pytest.raises(CmiError, match="--image-model .*no such directory.*save_pretrained"):
        ImageEncoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CmiError, match="--image-model .*not a saved transformers model"):
        ImageEncoder(tmp_path / "empty")
