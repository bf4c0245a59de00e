"""Decoding real odd-format files and generated CMYK, 16-bit and RGBA images."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ODD_DIR, image_files
from transforms.image_decode import IMAGE_SIZE, ImageDecodeError, decode_image

# What each real odd file must become: (format, displayed width, height), or None when
# Pillow cannot read it and it must become an error.
ODD_EXPECTED = {
    "camera.png": ("PNG", 512, 512),
    "coins.png": ("PNG", 384, 303),
    "text.png": ("PNG", 448, 172),
    "horse.png": ("PNG", 400, 328),
    "microaneurysms.png": ("PNG", 102, 102),
    "no_time_for_that_tiny.gif": ("GIF", 14, 25),
    "multipage.tif": ("TIFF", 10, 15),
    "multipage_rgb.tif": None,
}


def encode(image, image_format, **save_args):
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_args)
    return buffer.getvalue()


def test_odd_folder_files_are_all_expected():
    assert sorted(path.name for path in image_files(ODD_DIR)) == sorted(ODD_EXPECTED)


@pytest.mark.parametrize("name", sorted(ODD_EXPECTED))
def test_decode_odd_file(name):
    data = (ODD_DIR / name).read_bytes()
    expected = ODD_EXPECTED[name]
    if expected is None:
        with pytest.raises(ImageDecodeError, match="starts like a TIFF"):
            decode_image(data)
        return

    decoded = decode_image(data)
    assert decoded.pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert decoded.pixels.dtype == np.uint8
    assert (decoded.format, decoded.width, decoded.height) == expected


def test_decode_grayscale_gives_equal_channels():
    decoded = decode_image((ODD_DIR / "camera.png").read_bytes())
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 1])
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])


def test_decode_gif_uses_first_frame():
    data = (ODD_DIR / "no_time_for_that_tiny.gif").read_bytes()
    with Image.open(io.BytesIO(data)) as gif:
        gif.seek(0)
        first = gif.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    assert np.array_equal(decode_image(data).pixels, np.asarray(first))


def test_decode_cmyk_jpeg_gives_rgb_red():
    red = Image.new("CMYK", (64, 64), (0, 255, 255, 0))
    pixels = decode_image(encode(red, "JPEG", quality=95)).pixels.astype(int)
    assert np.all(pixels[..., 0] >= 245)
    assert np.all(pixels[..., 1:] <= 10)


def test_decode_16bit_png_ramp_keeps_tones():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    image = Image.fromarray(ramp)
    decoded = decode_image(encode(image, "PNG"), resize_filter="nearest", size=256)
    row = decoded.pixels[0, :, 0].astype(int)
    # 65535 / 257 = 255 exactly, so the ramp must span the full 8-bit range, in order.
    assert row[0] == 0
    assert row[-1] == 255
    assert np.all(np.diff(row) >= 0)
    assert abs(int(np.median(row)) - 128) <= 2


def test_decode_16bit_tiff_is_not_white():
    ramp = np.tile(np.linspace(0, 65535, 128).astype(np.uint16), (8, 1))
    decoded = decode_image(encode(Image.fromarray(ramp), "TIFF"), resize_filter="nearest", size=128)
    assert decoded.pixels[0, 0, 0] == 0
    assert decoded.pixels.mean() < 160


def test_decode_rgba_composites_on_white():
    # Fully transparent pixels hold pure black "hidden" colour; opaque ones are blue.
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[:, 16:] = (0, 0, 255, 255)
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), resize_filter="nearest", size=32)
    assert decoded.pixels[:, :16].tolist() == np.full((32, 16, 3), 255).tolist()
    assert decoded.pixels[:, 16:].tolist() == np.tile([0, 0, 255], (32, 16, 1)).tolist()


def test_decode_half_transparent_blends_with_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[...] = (0, 0, 0, 128)
    pixels = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), size=8).pixels
    # 255 * (1 - 128/255) = 127.
    assert np.all(np.abs(pixels.astype(int) - 127) <= 1)


def test_decode_empty_bytes_raises():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_decode_text_raises_not_an_image():
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"<html><body>404 not found</body></html>")


def test_decode_over_pixel_limit_raises_before_decoding():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match="100x100 = 10000 pixels"):
        decode_image(data, max_image_pixels=9999)


def test_decode_unknown_filter_raises():
    with pytest.raises(ValueError, match="resize_filter"):
        decode_image(encode(Image.new("RGB", (4, 4)), "PNG"), resize_filter="gaussian")
