"""The bad-input matrix: files an unattended run meets in folders nobody curated.

Every case is generated under tmp_path and has one expected outcome: a features row
(decoding succeeds with the given size and pixels), an errors row with stage "read" or
"decode" and a specific reason, or a skipped row with its reason. test_bad_input runs
each case through the functions MatchImageFiles and DecodeImageFn use. The Beam test
puts every case into one folder and checks that each matched file gets exactly one row.
docs/bad-inputs.md lists the same cases for readers.
"""

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.pvalue import TaggedOutput
from PIL import Image

from transforms import columns
from transforms.image_decode import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_SIZE,
    PIXELS,
    DecodeImageFn,
    ImageDecodeError,
    decode_image,
)
from transforms.read import (
    FOLDER_LINK_REASON,
    HIDDEN_REASON,
    NOT_UTF8_REASON,
    MatchImageFiles,
    list_local_files,
    match_files,
    resolve_input_pattern,
    skip_reason,
)

RUNNING_AS_ROOT = os.geteuid() == 0

# A read that blocks on a named pipe would hang the test run, so tests fail after this many seconds.
HANG_LIMIT_SECS = 120

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
# Stored under fully transparent pixels; it must never reach the model.
LOUD_MAGENTA = (255, 0, 255)


# ---------------------------------------------------------------------------
# Expected outcomes


@dataclass(frozen=True)
class Features:
    """A features row: decoding succeeds with this displayed size and format, and
    check_pixels (if given) asserts on the decoded [299, 299, 3] array."""

    width: int
    height: int
    image_format: str
    check_pixels: Callable[[np.ndarray], None] | None = None


@dataclass(frozen=True)
class Error:
    """An errors row with this stage whose reason matches the regular expression."""

    stage: str
    reason: str


@dataclass(frozen=True)
class Skip:
    """A skipped row whose reason matches the regular expression."""

    reason: str


@dataclass(frozen=True)
class Case:
    """One bad input and its expected outcome.

    build(folder, outside) creates the input in folder and returns the paths that must
    each get one row with that outcome. Nothing else in folder may get a row. outside is
    a folder beyond the input, for link targets.
    """

    name: str
    build: Callable[[Path, Path], list]
    expected: object


# ---------------------------------------------------------------------------
# Encoders and hand-made files


def encode(image, image_format, **save_args):
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_args)
    return buffer.getvalue()


def png_chunk(chunk_type, data):
    return struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", zlib.crc32(chunk_type + data))


def png_bytes(width, height, bit_depth, colour_type, idat_data):
    """A PNG with the given IHDR fields and compressed IDAT data, built chunk by chunk."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat_data)
        + png_chunk(b"IEND", b"")
    )


def bomb_png(width=50_000, height=50_000):
    """A PNG of 69 bytes whose header claims width x height RGB pixels."""
    return png_bytes(width, height, 8, 2, zlib.compress(b"\x00" * 64))


def with_claimed_size(data, image_format, width, height):
    """Rewrites the canvas size in a GIF or WebP (VP8X) header, leaving the frames small."""
    data = bytearray(data)
    if image_format == "GIF":
        data[6:10] = struct.pack("<HH", width, height)
    else:
        assert data[12:16] == b"VP8X", "an animated WebP starts with a VP8X chunk"
        data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def rgb48_png(red_green_blue_rows):
    """A 16-bit-per-channel RGB PNG (colour type 2, depth 16) from a uint16 [h, w, 3] array."""
    values = np.asarray(red_green_blue_rows, dtype=">u2")
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in values)
    return png_bytes(width, height, 16, 2, zlib.compress(raw))


_TIFF_SHORT = 3
_TIFF_LONG = 4
_TIFF_RATIONAL = 5


def gray_tiff(values, bits, signed=False, strip_offsets_type=_TIFF_LONG):
    """An uncompressed one-strip gray TIFF with the given sample depth and signedness.

    Pillow writes no 12-bit, signed 16-bit or unsigned 32-bit TIFF, so the file is built
    tag by tag. strip_offsets_type=_TIFF_RATIONAL stores StripOffsets with a wrong type.
    """
    values = np.asarray(values)
    height, width = values.shape
    pixel_bytes = _tiff_samples(values, bits, signed)
    tags = [
        (256, _TIFF_LONG, width),
        (257, _TIFF_LONG, height),
        (258, _TIFF_SHORT, bits),
        (259, _TIFF_SHORT, 1),  # no compression
        (262, _TIFF_SHORT, 1),  # BlackIsZero
        (273, strip_offsets_type, None),  # filled in below
        (277, _TIFF_SHORT, 1),
        (278, _TIFF_LONG, height),
        (279, _TIFF_LONG, len(pixel_bytes)),
        (339, _TIFF_SHORT, 2 if signed else 1),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    rational_offset = 8 + ifd_size
    pixels_offset = rational_offset + 8

    entries = b""
    for tag, field_type, value in tags:
        if tag == 273:
            value = rational_offset if field_type == _TIFF_RATIONAL else pixels_offset
        packed = struct.pack("<HH", value, 0) if field_type == _TIFF_SHORT else struct.pack("<I", value)
        entries += struct.pack("<HHI", tag, field_type, 1) + packed
    rational = struct.pack("<II", pixels_offset, 1)
    ifd = struct.pack("<H", len(tags)) + entries + b"\x00" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd + rational + pixel_bytes


def _tiff_samples(values, bits, signed):
    if bits != 12:
        dtype = {(16, False): "<u2", (16, True): "<i2", (32, False): "<u4", (32, True): "<i4"}[(bits, signed)]
        return values.astype(dtype).tobytes()
    # 12-bit samples are packed most significant bit first, and each row is padded to a whole byte.
    rows = []
    for row in values:
        bit_text = "".join(format(int(value), "012b") for value in row)
        bit_text += "0" * (-len(bit_text) % 8)
        rows.append(int(bit_text, 2).to_bytes(len(bit_text) // 8, "big"))
    return b"".join(rows)


def gradient_photo(width=128, height=96):
    """An RGB image with smooth gradients, like a photo without sharp edges."""
    y, x = np.mgrid[0:height, 0:width]
    red = x * 255 // (width - 1)
    green = y * 255 // (height - 1)
    blue = (x + y) * 255 // (width + height - 2)
    return Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8))


def quadrants(width=64, height=32):
    """Four flat colours: red top-left, green top-right, blue bottom-left, yellow
    bottom-right. Edges lie on multiples of 16, so JPEG blocks never straddle two."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    half_w, half_h = width // 2, height // 2
    pixels[:half_h, :half_w] = RED
    pixels[:half_h, half_w:] = (0, 255, 0)
    pixels[half_h:, :half_w] = BLUE
    pixels[half_h:, half_w:] = (255, 255, 0)
    return Image.fromarray(pixels)


def halves(mode, left, right, size=(16, 16)):
    """An image of the mode whose left half has one value and right half another."""
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def gray_ramp(maximum, dtype, width=256, height=16):
    return np.tile(np.linspace(0, maximum, width).astype(dtype), (height, 1))


def jpeg_with_orientation(image, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif)


def scramble_jpeg_scan(data, forbid_ff):
    """Overwrites 64 bytes in the middle of the entropy-coded scan with fixed noise."""
    noise = np.random.default_rng(7).integers(0, 256, 64, dtype=np.uint8)
    if forbid_ff:
        # Without 0xFF no marker appears, so libjpeg meets only bad Huffman codes.
        noise[noise == 0xFF] = 0x55
    else:
        noise[10:12] = (0xFF, 0xC0)  # a second start-of-frame marker inside the scan
    middle = len(data) // 2
    return data[:middle] + noise.tobytes() + data[middle + 64 :]


def damage_png_idat(data):
    """Flips bits of the first IDAT chunk's data without updating its CRC."""
    start = data.index(b"IDAT") + 4 + 10
    damaged = bytes(byte ^ 0x5A for byte in data[start : start + 16])
    return data[:start] + damaged + data[start + 16 :]


# ---------------------------------------------------------------------------
# Pixel checks


def resized_reference(image):
    """What decoding must give for an image that needs no conversion beyond RGB."""
    return np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))


def equals(image):
    expected = resized_reference(image)

    def check(pixels):
        assert np.array_equal(pixels, expected)

    return check


def close_to(reference_pixels, max_mean_difference, max_difference=255):
    def check(pixels):
        difference = np.abs(pixels.astype(int) - reference_pixels.astype(int))
        assert difference.mean() <= max_mean_difference
        assert difference.max() <= max_difference

    return check


def solid(colour):
    def check(pixels):
        assert np.array_equal(pixels, np.broadcast_to(np.array(colour, dtype=np.uint8), pixels.shape))

    return check


def full_range_ramp(pixels):
    """A left-to-right gray ramp over the full input range must span 0..255 in order."""
    row = pixels[0, :, 0].astype(int)
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    assert row[0] <= 2
    assert row[-1] >= 253
    assert np.all(np.diff(row) >= 0)
    assert abs(row.mean() - 127.5) <= 3


def float_ramp_with_nan_rows(pixels):
    full_range_ramp(pixels[:100])
    assert np.all(pixels[-1] == 0)


def cmyk_red(pixels):
    assert np.all(pixels[..., 0] >= 245)
    assert np.all(pixels[..., 1:] <= 10)


def displayed_like(orientation):
    """Checks against quadrants() rotated as the EXIF orientation requires and stored without EXIF."""
    method = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90, 3: Image.Transpose.ROTATE_180}
    rotated = quadrants().transpose(method[orientation])
    reference = decode_image(encode(rotated, "JPEG", quality=95)).pixels
    # JPEG blocks of the rotated and the stored image differ a little at colour edges.
    return close_to(reference, max_mean_difference=2, max_difference=60)


def differs_from_undamaged(pixels):
    undamaged = decode_image(encode(gradient_photo(), "JPEG", quality=90)).pixels
    assert np.abs(pixels.astype(int) - undamaged.astype(int)).mean() > 1


# ---------------------------------------------------------------------------
# Case builders


def write(folder, name, data):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def file_case(name, file_name, make_bytes, expected):
    return Case(name, lambda folder, outside: [write(folder, file_name, make_bytes())], expected)


def build_folder_named_like_image(folder, outside):
    return [write(folder / "folder.jpg", "inside.png", encode(Image.new("RGB", (8, 8), RED), "PNG"))]


def build_symlink_loop(folder, outside):
    (folder / "a.jpg").symlink_to("b.jpg")
    (folder / "b.jpg").symlink_to("a.jpg")
    return [folder / "a.jpg", folder / "b.jpg"]


def build_dangling_symlink(folder, outside):
    (folder / "dangling.jpg").symlink_to("missing.jpg")
    return [folder / "dangling.jpg"]


def build_symlink_to_image(folder, outside):
    target = write(outside, "photo.png", encode(Image.new("RGB", (8, 8), BLUE), "PNG"))
    (folder / "link.png").symlink_to(target)
    return [folder / "link.png"]


def build_symlink_to_folder(folder, outside):
    (folder / "real").mkdir()
    (folder / "album.jpg").symlink_to(folder / "real")
    return [folder / "album.jpg"]


def build_unreadable_file(folder, outside):
    path = write(folder, "locked.png", encode(Image.new("RGB", (8, 8), RED), "PNG"))
    path.chmod(0o000)
    assert path.stat().st_mode & 0o777 == 0
    return [path]


def build_fifo(folder, outside):
    path = folder / "pipe.jpg"
    os.mkfifo(path)
    return [path]


def build_file_in_hidden_folder(folder, outside):
    return [write(folder / ".cache", "thumb.jpg", encode(Image.new("RGB", (8, 8)), "JPEG"))]


def build_non_utf8_name(folder, outside):
    # Linux file names are bytes. "caf\xe9" is Latin-1, not valid UTF-8.
    raw_path = os.fsencode(folder) + b"/caf\xe9.png"
    with open(raw_path, "wb") as handle:
        handle.write(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    return [Path(os.fsdecode(raw_path))]


def animated(image_format, **save_args):
    first, second = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)
    return encode(first, image_format, save_all=True, append_images=[second], **save_args)


def palette_with_transparent_colour(image_format):
    # Index 0 (loud magenta) is the transparent colour and fills the left half.
    image = halves("P", 0, 1)
    image.putpalette([*LOUD_MAGENTA, *BLUE] + [0] * (256 * 3 - 6))
    return encode(image, image_format, transparency=0)


WHITE_LEFT_BLUE_RIGHT = halves("RGB", WHITE, BLUE)

_BOMB_OVER_LIMIT_TEXT = "image is 50000x50000 = 2500000000 pixels, over the limit of"

CASES = [
    # Not an image at all.
    file_case("empty file", "empty.jpg", lambda: b"", Error("decode", r"^file is empty \(0 bytes\)$")),
    file_case(
        "text saved as jpg",
        "notes.jpg",
        lambda: b"Lorem ipsum dolor sit amet\n" * 20,
        Error("decode", r"^not an image: the first bytes b'Lorem ipsum dolo' match none of JPEG, PNG"),
    ),
    file_case(
        "html page saved as png",
        "download.png",
        lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        Error("decode", r"^not an image: the first bytes b'<!DOCTYPE html><' match none of"),
    ),
    # Truncated and damaged files.
    file_case(
        "truncated jpeg",
        "cut.jpg",
        lambda: (data := encode(gradient_photo(), "JPEG"))[: len(data) // 2],
        Error("decode", r"^image data is damaged or truncated \(OSError: image file is truncated"),
    ),
    file_case(
        "jpeg cut inside header",
        "cut_header.jpg",
        lambda: encode(gradient_photo(), "JPEG")[:120],
        Error("decode", r"^image header is damaged or truncated \(OSError: Truncated File Read\)$"),
    ),
    file_case(
        "truncated png",
        "cut.png",
        lambda: (data := encode(gradient_photo(), "PNG"))[: len(data) // 2],
        Error("decode", r"^PNG is truncated: chunk IDAT at byte \d+ needs \d+ bytes, but the file ends"),
    ),
    file_case(
        "truncated gif",
        "cut.gif",
        lambda: (data := encode(gradient_photo().convert("P"), "GIF"))[: len(data) // 2],
        Error("decode", r"^image data is damaged or truncated \(OSError: image file is truncated"),
    ),
    file_case(
        "truncated webp",
        "cut.webp",
        lambda: (data := encode(gradient_photo(), "WEBP"))[: len(data) // 2],
        Error("decode", r"^WEBP is truncated: its RIFF header declares \d+ bytes, but the file has \d+$"),
    ),
    file_case(
        "jpeg with a marker scrambled into its scan",
        "scrambled_marker.jpg",
        lambda: scramble_jpeg_scan(encode(gradient_photo(), "JPEG", quality=90), forbid_ff=False),
        Error("decode", r"^image data is damaged or truncated \(OSError: broken data stream"),
    ),
    # NOTE: JPEG has no checksum and Pillow does not pass libjpeg's warnings on, so damage
    # that keeps the marker structure decodes to wrong pixels without an error.
    file_case(
        "jpeg with scrambled scan data",
        "scrambled_scan.jpg",
        lambda: scramble_jpeg_scan(encode(gradient_photo(), "JPEG", quality=90), forbid_ff=True),
        Features(128, 96, "JPEG", differs_from_undamaged),
    ),
    file_case(
        "png with damaged pixel data",
        "damaged.png",
        lambda: damage_png_idat(encode(gradient_photo(), "PNG")),
        Error(
            "decode", r"^PNG is damaged: chunk IDAT at byte 33 stores CRC 0x[0-9a-f]{8}, but its bytes give"
        ),
    ),
    file_case(
        "png header with width 0",
        "zero_width.png",
        lambda: png_bytes(0, 10, 8, 2, zlib.compress(b"")),
        Error("decode", r"^the file starts like a PNG, but Pillow cannot read this PNG variant"),
    ),
    file_case(
        "tiff tag with wrong type",
        "wrong_tag_type.tif",
        lambda: gray_tiff(gray_ramp(65535, np.uint16, 8, 4), 16, strip_offsets_type=_TIFF_RATIONAL),
        Error("decode", r"^image data is damaged or truncated \(TypeError: 'IFDRational' object"),
    ),
    file_case(
        "png header claims 50000x50000",
        "bomb.png",
        bomb_png,
        Error("decode", rf"^{_BOMB_OVER_LIMIT_TEXT} {DEFAULT_MAX_IMAGE_PIXELS} \(raise --max_image_pixels"),
    ),
    file_case(
        "gif header claims 65535x65535",
        "bomb.gif",
        lambda: with_claimed_size(animated("GIF"), "GIF", 65535, 65535),
        Error(
            "decode",
            rf"^image is 65535x65535 = 4294836225 pixels, over the limit of {DEFAULT_MAX_IMAGE_PIXELS} ",
        ),
    ),
    file_case(
        "webp canvas claims 16383x16383",
        "bomb.webp",
        lambda: with_claimed_size(animated("WEBP", lossless=True), "WEBP", 16383, 16383),
        Error(
            "decode",
            rf"^image is 16383x16383 = 268402689 pixels, over the limit of {DEFAULT_MAX_IMAGE_PIXELS} ",
        ),
    ),
    # Colour models and depths.
    file_case(
        "cmyk jpeg",
        "cmyk.jpg",
        lambda: encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95),
        Features(64, 64, "JPEG", cmyk_red),
    ),
    file_case(
        "16-bit gray png",
        "gray16.png",
        lambda: encode(Image.fromarray(gray_ramp(65535, np.uint16)), "PNG"),
        Features(256, 16, "PNG", full_range_ramp),
    ),
    file_case(
        "16-bit gray tiff",
        "gray16.tif",
        lambda: encode(Image.fromarray(gray_ramp(65535, np.uint16)), "TIFF"),
        Features(256, 16, "TIFF", full_range_ramp),
    ),
    file_case(
        "16-bit rgb png",
        "rgb48.png",
        lambda: rgb48_png(np.repeat(gray_ramp(65535, np.uint16)[..., np.newaxis], 3, axis=2)),
        Features(256, 16, "PNG", full_range_ramp),
    ),
    file_case(
        "12-bit gray tiff",
        "gray12.tif",
        lambda: gray_tiff(gray_ramp(4095, np.uint16), 12),
        Features(256, 16, "TIFF", full_range_ramp),
    ),
    file_case(
        "signed 16-bit gray tiff",
        "gray16s.tif",
        lambda: gray_tiff(
            np.concatenate([[[-32768]] * 16, gray_ramp(32767, np.int16, 255)], axis=1), 16, True
        ),
        Features(256, 16, "TIFF", full_range_ramp),
    ),
    file_case(
        "unsigned 32-bit gray tiff",
        "gray32u.tif",
        lambda: gray_tiff(gray_ramp(2**32 - 1, np.uint32), 32),
        Features(256, 16, "TIFF", full_range_ramp),
    ),
    file_case(
        "signed 32-bit gray tiff",
        "gray32.tif",
        lambda: encode(Image.fromarray(gray_ramp(2**31 - 1, np.int32), "I"), "TIFF"),
        Features(256, 16, "TIFF", full_range_ramp),
    ),
    file_case(
        "32-bit float tiff",
        "float.tif",
        lambda: encode(
            Image.fromarray(
                np.vstack([gray_ramp(1.0, np.float32, height=8), np.full((8, 256), np.nan, np.float32)])
            ),
            "TIFF",
        ),
        Features(256, 16, "TIFF", float_ramp_with_nan_rows),
    ),
    # Orientation, encodings and animation.
    file_case(
        "jpeg exif orientation 6",
        "portrait.jpg",
        lambda: jpeg_with_orientation(quadrants(), 6),
        Features(32, 64, "JPEG", displayed_like(6)),
    ),
    file_case(
        "jpeg exif orientation 8",
        "portrait_ccw.jpg",
        lambda: jpeg_with_orientation(quadrants(), 8),
        Features(32, 64, "JPEG", displayed_like(8)),
    ),
    file_case(
        "progressive jpeg",
        "progressive.jpg",
        lambda: encode(gradient_photo(), "JPEG", quality=90, progressive=True),
        Features(128, 96, "JPEG", close_to(resized_reference(gradient_photo()), 2, 30)),
    ),
    file_case(
        "webp",
        "photo.webp",
        lambda: encode(gradient_photo(), "WEBP", quality=90),
        Features(128, 96, "WEBP", close_to(resized_reference(gradient_photo()), 3, 40)),
    ),
    file_case("animated gif", "anim.gif", lambda: animated("GIF"), Features(16, 16, "GIF", solid(RED))),
    file_case(
        "animated webp",
        "anim.webp",
        lambda: animated("WEBP", lossless=True),
        Features(16, 16, "WEBP", solid(RED)),
    ),
    file_case("animated png", "anim.png", lambda: animated("PNG"), Features(16, 16, "PNG", solid(RED))),
    file_case(
        "bmp",
        "photo.bmp",
        lambda: encode(gradient_photo(), "BMP"),
        Features(128, 96, "BMP", equals(gradient_photo())),
    ),
    file_case(
        "jpeg named .png",
        "really_a_jpeg.png",
        lambda: encode(gradient_photo(), "JPEG", quality=95),
        Features(128, 96, "JPEG", close_to(resized_reference(gradient_photo()), 2, 30)),
    ),
    # Transparency: the loud colour under transparent pixels must become white.
    file_case(
        "palette png with transparent colour",
        "palette.png",
        lambda: palette_with_transparent_colour("PNG"),
        Features(16, 16, "PNG", equals(WHITE_LEFT_BLUE_RIGHT)),
    ),
    file_case(
        "gif with transparent colour",
        "palette.gif",
        lambda: palette_with_transparent_colour("GIF"),
        Features(16, 16, "GIF", equals(WHITE_LEFT_BLUE_RIGHT)),
    ),
    file_case(
        "rgba png",
        "rgba.png",
        lambda: encode(halves("RGBA", (*LOUD_MAGENTA, 0), (*BLUE, 255)), "PNG"),
        Features(16, 16, "PNG", equals(WHITE_LEFT_BLUE_RIGHT)),
    ),
    file_case(
        "rgba webp",
        "rgba.webp",
        lambda: encode(halves("RGBA", (*LOUD_MAGENTA, 0), (*BLUE, 255)), "WEBP", lossless=True, exact=True),
        Features(16, 16, "WEBP", equals(WHITE_LEFT_BLUE_RIGHT)),
    ),
    file_case(
        "grayscale with alpha",
        "gray_alpha.png",
        lambda: encode(halves("LA", (0, 0), (100, 255)), "PNG"),
        Features(16, 16, "PNG", equals(halves("L", 255, 100))),
    ),
    file_case(
        "16-bit gray png with transparent value",
        "gray16_trns.png",
        lambda: encode(halves("I;16", 1234, 0), "PNG", transparency=1234),
        Features(16, 16, "PNG", equals(halves("RGB", WHITE, (0, 0, 0)))),
    ),
    # Sizes.
    file_case(
        "1x1 image",
        "dot.png",
        lambda: encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        Features(1, 1, "PNG", solid((10, 200, 30))),
    ),
    file_case(
        "6000x4 image",
        "strip.png",
        lambda: encode(halves("RGB", RED, BLUE, size=(6000, 4)), "PNG"),
        Features(6000, 4, "PNG", equals(halves("RGB", RED, BLUE, size=(6000, 4)))),
    ),
    file_case(
        "1-bit image",
        "bilevel.png",
        lambda: encode(halves("1", 0, 1), "PNG"),
        Features(16, 16, "PNG", equals(halves("L", 0, 255))),
    ),
    # Names and file-system entries.
    file_case(
        "spaces and non-ascii name",
        "Sommer in Köln 写真 01.jpg",
        lambda: encode(Image.new("RGB", (8, 8), RED), "JPEG", quality=95),
        Features(8, 8, "JPEG", close_to(resized_reference(Image.new("RGB", (8, 8), RED)), 2, 6)),
    ),
    file_case(
        "upper-case .JPG",
        "IMG_0001.JPG",
        lambda: encode(Image.new("RGB", (8, 8), RED), "JPEG", quality=95),
        Features(8, 8, "JPEG"),
    ),
    file_case(
        "mixed-case .PnG",
        "scan.PnG",
        lambda: encode(Image.new("RGB", (8, 8), RED), "PNG"),
        Features(8, 8, "PNG", solid(RED)),
    ),
    Case("non-utf-8 name", build_non_utf8_name, Skip(re.escape(NOT_UTF8_REASON))),
    file_case(
        "hidden file",
        ".secret.jpg",
        lambda: encode(Image.new("RGB", (8, 8)), "JPEG"),
        Skip(re.escape(HIDDEN_REASON)),
    ),
    Case("file in hidden folder", build_file_in_hidden_folder, Skip(re.escape(HIDDEN_REASON))),
    file_case(
        "non-image extension",
        "notes.txt",
        lambda: b"not an image",
        Skip(r"^not an image extension \(\.txt\); matched"),
    ),
    file_case(
        "no extension",
        "README",
        lambda: b"read me",
        Skip(r"^not an image extension \(no extension\); matched"),
    ),
    Case("folder named like an image", build_folder_named_like_image, Features(8, 8, "PNG", solid(RED))),
    Case(
        "symlink loop",
        build_symlink_loop,
        Error(
            "read",
            r"^symlink loop: the link points to '[ab]\.jpg', and following the links never reaches a file$",
        ),
    ),
    Case(
        "dangling symlink",
        build_dangling_symlink,
        Error("read", r"^broken symlink: following the link to 'missing\.jpg' reaches no existing file$"),
    ),
    Case("symlink to an image", build_symlink_to_image, Features(8, 8, "PNG", solid(BLUE))),
    Case("symlink to a folder", build_symlink_to_folder, Skip(re.escape(FOLDER_LINK_REASON))),
    Case(
        "named pipe named like an image",
        build_fifo,
        Error("read", r"^not a regular file but a named pipe \(FIFO\); only regular files are read$"),
    ),
    # Root reads a chmod 000 file anyway, so there the file must be decoded as usual.
    Case(
        "unreadable file (chmod 000)",
        build_unreadable_file,
        Features(8, 8, "PNG", solid(RED))
        if RUNNING_AS_ROOT
        else Error("read", r"^permission denied: the file cannot be opened for reading \(PermissionError"),
    ),
]


# ---------------------------------------------------------------------------
# Running the product's matching and decoding


@pytest.fixture
def hang_limit():
    """Fails the test after HANG_LIMIT_SECS, so that a blocking read cannot hang the run."""

    def fail(signal_number, frame):
        raise TimeoutError(f"the test timed out after {HANG_LIMIT_SECS} s, probably because a read blocked")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(HANG_LIMIT_SECS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Row:
    """The row a matched file became: kind is "features", "errors" or "skipped"."""

    kind: str
    stage: str = ""
    reason: str = ""
    decoded: dict | None = field(default=None, repr=False)


def match_and_decode(folder, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Runs folder through the functions MatchImageFiles and DecodeImageFn use, in one
    process; returns {path: Row}. Fails when a path gets two rows."""
    pattern, root = resolve_input_pattern(str(folder))
    decode = DecodeImageFn(max_image_pixels=max_image_pixels)
    rows = {}
    for metadata in match_files(pattern):
        path = metadata.path
        assert path not in rows, f"{path} was matched twice"
        reason = skip_reason(path, root)
        if reason is not None:
            rows[path] = Row("skipped", reason=reason)
            continue
        outputs = list(decode.process(path))
        assert len(outputs) == 1, f"{path} gave {len(outputs)} outputs, expected 1"
        rows[path] = _row_from_output(outputs[0])
    return rows


def _row_from_output(output):
    if isinstance(output, TaggedOutput):
        assert output.tag == DecodeImageFn.ERRORS_TAG
        return Row("errors", stage=output.value[columns.STAGE], reason=output.value[columns.ERROR])
    return Row("features", decoded=output)


def assert_outcome(row, expected):
    if isinstance(expected, Features):
        assert row.kind == "features", f"expected a features row, received {row}"
        assert (row.decoded[columns.WIDTH], row.decoded[columns.HEIGHT]) == (expected.width, expected.height)
        assert row.decoded[columns.FORMAT] == expected.image_format
        assert row.decoded[PIXELS].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        if expected.check_pixels is not None:
            expected.check_pixels(row.decoded[PIXELS])
    elif isinstance(expected, Error):
        assert row.kind == "errors", f"expected an errors row, received {row}"
        assert row.stage == expected.stage
        assert re.search(expected.reason, row.reason), (
            f"reason {row.reason!r} does not match {expected.reason!r}"
        )
    else:
        assert row.kind == "skipped", f"expected a skipped row, received {row}"
        assert re.search(expected.reason, row.reason), (
            f"reason {row.reason!r} does not match {expected.reason!r}"
        )


# ---------------------------------------------------------------------------
# The matrix


def test_matrix_has_at_least_25_distinct_cases():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    assert len(names) >= 25


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case, tmp_path, hang_limit):
    folder = tmp_path / "input"
    folder.mkdir()
    built = [str(path) for path in case.build(folder, tmp_path / "outside")]

    rows = match_and_decode(folder)

    assert sorted(rows) == sorted(built)
    for path in built:
        assert_outcome(rows[path], case.expected)


# ---------------------------------------------------------------------------
# Pixel limit: refused from the header, before anything that size is allocated


def test_pixel_limit_custom_above_pillow_threshold():
    # 10**9 is above Pillow's own refusal threshold (2 x 89478485), which used to win.
    with pytest.raises(ImageDecodeError, match=rf"^{_BOMB_OVER_LIMIT_TEXT} 1000000000 \("):
        decode_image(bomb_png(), max_image_pixels=10**9)


def test_pixel_limit_custom_small():
    data = encode(Image.new("RGB", (40, 40), RED), "PNG")
    with pytest.raises(ImageDecodeError, match=r"^image is 40x40 = 1600 pixels, over the limit of 1599 "):
        decode_image(data, max_image_pixels=1599)
    assert decode_image(data, max_image_pixels=1600).width == 40


def test_pixel_limit_custom_through_decode_fn(tmp_path):
    write(tmp_path, "big.png", encode(Image.new("RGB", (40, 40), RED), "PNG"))
    rows = match_and_decode(tmp_path, max_image_pixels=1000)
    (row,) = rows.values()
    assert row.kind == "errors"
    assert row.stage == "decode"
    assert row.reason.startswith("image is 40x40 = 1600 pixels, over the limit of 1000")


def test_pixel_limit_refuses_before_loading(monkeypatch):
    def fail_load(image):
        raise AssertionError("pixels were loaded for an image over the limit")

    monkeypatch.setattr(Image.Image, "load", fail_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", fail_load)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(bomb_png())


def filled_gray_bomb_png(filled_rows=2000):
    """A gray PNG whose header claims 50000x50000 pixels and whose IDAT contains
    filled_rows rows of zeros (about 100 KB compressed).

    Decoding it writes filled_rows x 50000 bytes and more. Without the pixel limit,
    Pillow 12 grew the process by 2.6 GB on this file until a 16 GB address-space limit
    raised MemoryError. The 69-byte bomb_png would not show in the peak, because pages
    that are allocated but never written do not count.
    """
    compressor = zlib.compressobj(9)
    row = b"\x00" * 50_001  # filter byte + 50000 gray samples
    idat = b"".join(compressor.compress(row) for _ in range(filled_rows)) + compressor.flush()
    return png_bytes(50_000, 50_000, 8, 0, idat)


def test_pixel_limit_memory_stays_flat():
    # Measured in a fresh process, because this process's peak already includes earlier tests.
    script = textwrap.dedent(
        """
        import resource, sys
        from tests.test_bad_inputs import bomb_png, filled_gray_bomb_png
        from transforms.image_decode import ImageDecodeError, decode_image
        files = (bomb_png(), filled_gray_bomb_png())
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for data in files:
            for limit in (None, 10**9):
                try:
                    decode_image(data) if limit is None else decode_image(data, max_image_pixels=limit)
                except ImageDecodeError:
                    continue
                sys.exit("decode_image accepted a 50000x50000 image")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(len(files[0]), after - before)
        """
    )
    repo_root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=repo_root, capture_output=True, text=True, timeout=HANG_LIMIT_SECS
    )

    assert result.returncode == 0, result.stderr
    small_bomb_bytes, peak_growth_kib = (int(value) for value in result.stdout.split())
    assert small_bomb_bytes < 120
    # ru_maxrss is in KiB on Linux.
    assert peak_growth_kib < 20 * 1024


# ---------------------------------------------------------------------------
# Cases outside the per-folder matrix


def test_file_removed_after_matching_is_read_error(tmp_path):
    (output,) = DecodeImageFn().process(str(tmp_path / "gone.jpg"))
    assert output.tag == DecodeImageFn.ERRORS_TAG
    assert output.value[columns.STAGE] == "read"
    assert output.value[columns.ERROR] == "file not found: it was removed or renamed after matching"


def test_unlistable_subfolder_is_read_error(tmp_path, monkeypatch):
    # Root lists any folder, so listing the folder is made to fail as it does for other users.
    locked = tmp_path / "locked"
    write(locked, "inside.png", encode(Image.new("RGB", (8, 8)), "PNG"))
    write(tmp_path, "ok.png", encode(Image.new("RGB", (8, 8), RED), "PNG"))
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rows = match_and_decode(tmp_path)

    assert sorted(rows) == [str(locked), str(tmp_path / "ok.png")]
    assert rows[str(tmp_path / "ok.png")].kind == "features"
    assert rows[str(locked)].kind == "errors"
    assert rows[str(locked)].stage == "read"
    assert rows[str(locked)].reason.startswith(
        "folder cannot be listed (PermissionError: [Errno 13] Permission denied"
    )
    assert rows[str(locked)].reason.endswith("so the files in it were not matched")


def test_input_folder_with_glob_characters(tmp_path):
    folder = tmp_path / "Summer [2019] *best* ?"
    write(folder, "beach.png", encode(Image.new("RGB", (8, 8), BLUE), "PNG"))
    write(tmp_path / "Summer 2", "other.png", encode(Image.new("RGB", (8, 8)), "PNG"))

    rows = match_and_decode(folder)

    assert sorted(rows) == [str(folder / "beach.png")]
    assert rows[str(folder / "beach.png")].kind == "features"


def test_input_single_file_with_glob_characters(tmp_path):
    path = write(tmp_path, "photo [1].png", encode(Image.new("RGB", (8, 8)), "PNG"))
    write(tmp_path, "photo 1.png", encode(Image.new("RGB", (8, 8)), "PNG"))
    pattern, _ = resolve_input_pattern(str(path))
    assert [metadata.path for metadata in match_files(pattern)] == [str(path)]


def test_glob_matches_like_beam(tmp_path):
    for name in ("a.jpg", "b.png", "sub/c.jpg", "sub/deeper/d.jpg"):
        write(tmp_path, name, b"x")
    for pattern in ("*.jpg", "**/*.jpg", "**", "sub/*", "?.png", "[ab].*"):
        full_pattern = f"{tmp_path}/{pattern}"
        ours = [metadata.path for metadata in list_local_files(full_pattern)]
        beams = sorted(
            metadata.path
            for metadata in beam.io.filesystems.FileSystems.match([full_pattern])[0].metadata_list
        )
        assert ours == beams, pattern


# ---------------------------------------------------------------------------
# Every case in one folder, through MatchImageFiles and DecodeImageFn in Beam


def _outcome_record(kind):
    def record(row):
        detail = f"{row[columns.WIDTH]}x{row[columns.HEIGHT]}" if kind == "features" else ""
        reason = row.get(columns.ERROR) or row.get(columns.REASON) or ""
        return json.dumps([row[columns.PATH], kind, row.get(columns.STAGE, ""), reason, detail])

    return record


def run_match_and_decode_pipeline(folder, output_prefix):
    """Runs MatchImageFiles and DecodeImageFn on the in-process runner; returns the
    outcome records and the pipeline's counters."""
    pipeline = beam.Pipeline(runner="FnApiRunner")
    images, skipped = pipeline | "Match" >> MatchImageFiles(str(folder))
    decoded = images | "Decode" >> beam.ParDo(DecodeImageFn()).with_outputs(
        DecodeImageFn.ERRORS_TAG, main="images"
    )
    records = (
        decoded.images | "FeatureRecords" >> beam.Map(_outcome_record("features")),
        decoded[DecodeImageFn.ERRORS_TAG] | "ErrorRecords" >> beam.Map(_outcome_record("errors")),
        skipped | "SkippedRecords" >> beam.Map(_outcome_record("skipped")),
    ) | beam.Flatten()
    records | beam.io.WriteToText(str(output_prefix), shard_name_template="")
    result = pipeline.run()
    result.wait_until_finish()

    lines = Path(output_prefix).read_text(encoding="utf-8").splitlines()
    counters = {
        counter.key.metric.name: counter.committed
        for counter in result.metrics().query(MetricsFilter().with_namespace("inception_parity"))["counters"]
    }
    return [json.loads(line) for line in lines], counters


def every_entry(folder):
    """Every file-system entry below folder that is not a real folder, found without the
    product's code: files, links (to anything), named pipes."""
    entries = []
    for parent, folders, files in os.walk(folder):
        entries += [os.path.join(parent, name) for name in files]
        entries += [
            os.path.join(parent, name) for name in folders if os.path.islink(os.path.join(parent, name))
        ]
    return entries


def test_all_cases_in_one_pipeline(tmp_path, hang_limit):
    folder = tmp_path / "input"
    expected = {}
    for index, case in enumerate(CASES):
        case_folder = folder / f"case{index:02d}"
        case_folder.mkdir(parents=True)
        for path in case.build(case_folder, tmp_path / f"outside{index:02d}"):
            expected[os.fsencode(path).decode("utf-8", "backslashreplace")] = case

    records, counters = run_match_and_decode_pipeline(folder, tmp_path / "outcomes.jsonl")

    # Nothing lost, nothing twice: every entry on disk has exactly one row.
    row_paths = [record[0] for record in records]
    disk_paths = [os.fsencode(path).decode("utf-8", "backslashreplace") for path in every_entry(folder)]
    assert sorted(row_paths) == sorted(set(row_paths))
    assert sorted(row_paths) == sorted(disk_paths)

    # matched = decoded + errors + skipped, by the pipeline's own counters.
    assert counters["files_matched"] == len(disk_paths)
    assert counters["files_matched"] == (
        counters["images_decoded"] + counters["images_failed_decode"] + counters["files_skipped"]
    )

    for path, kind, stage, reason, detail in records:
        case_expected = expected[path].expected
        expected_kind = {Features: "features", Error: "errors", Skip: "skipped"}[type(case_expected)]
        assert kind == expected_kind, f"{expected[path].name}: {path} became {kind}: {reason}"
        if isinstance(case_expected, Features):
            assert detail == f"{case_expected.width}x{case_expected.height}", expected[path].name
        else:
            assert re.search(case_expected.reason, reason), f"{expected[path].name}: {reason!r}"
        if isinstance(case_expected, Error):
            assert stage == case_expected.stage, expected[path].name


@pytest.mark.slow
def test_run_over_all_cases_exits_with_error_status(tmp_path, hang_limit, fixture_pair, capsys):
    from pipeline import run as run_module

    folder = tmp_path / "input"
    expected_kinds = {"features": 0, "errors": 0, "skipped": 0}
    for index, case in enumerate(CASES):
        case_folder = folder / f"case{index:02d}"
        case_folder.mkdir(parents=True)
        built = case.build(case_folder, tmp_path / f"outside{index:02d}")
        kind = {Features: "features", Error: "errors", Skip: "skipped"}[type(case.expected)]
        expected_kinds[kind] += len(built)

    output = tmp_path / "out"
    status = run_module.main(["--input", str(folder), "--output", str(output), "--models", "fixture"])

    # Far more than 5% of the files are broken, so the run ends with status 4 after
    # writing everything, and its accounting line holds.
    assert status == 4
    (manifest_path,) = (output / "runs").glob("*.json")
    manifest = json.loads(manifest_path.read_text())
    counts = manifest["counts"]
    assert manifest["accounting_ok"] is True
    assert counts["matched"] == counts["features"] + counts["errors"] + counts["skipped"]
    assert {kind: counts[kind] for kind in expected_kinds} == expected_kinds
    assert "Exit status 4" in capsys.readouterr().out
