"""Decoding of image bytes into the 299×299 8-bit RGB arrays both extractors take.

Conversion rules (also in the README):
  * Only the first frame of animated GIF/WebP/PNG and multi-page TIFF is used.
  * EXIF orientation is applied, so features follow what an image viewer shows, and
    width/height are the displayed size.
  * Integer grayscale deeper than 8 bits (Pillow modes I;16* and I) is scaled from
    [0, maximum of its sample type] to [0, 255] and rounded. So 16-bit PNG and TIFF are
    divided by 257, 12-bit TIFF by 4095/255 and unsigned 32-bit TIFF by (2^32 - 1)/255.
    For signed TIFF samples the maximum is 2^(bits-1) - 1, and negative values become 0.
    16-bit RGB and RGBA PNGs are reduced to 8 bits by Pillow, which keeps the high byte.
  * 32-bit float images (mode F) are read as intensities in [0, 1]; values outside are
    clipped and NaN becomes 0.
  * Images with transparency (RGBA, LA, PA, palette or gray or RGB with a transparent
    colour) are alpha-composited onto an opaque white background, so whatever colour
    a fully transparent pixel stores never reaches the model.
  * Grayscale, 1-bit, palette, CMYK and YCbCr images are converted to RGB with Pillow.
  * The result is resized to 299×299 with the chosen Pillow filter, without keeping the
    aspect ratio: every pixel of the image reaches the model.

Damaged files become ImageDecodeError with the reason. The size in the header is checked
against --max_image_pixels before any pixel is decoded. PNG chunks are checked for
truncation and for CRC errors in critical chunks (Pillow 12 skips the CRC of pixel
data). A WebP file shorter than its RIFF header declares is rejected as truncated.
NOTE: JPEG has no checksum. Damaged entropy-coded data that keeps the marker structure
intact decodes without an error (libjpeg only warns, and Pillow does not pass its
warnings on), so such a JPEG yields features of wrong pixels.
"""

import hashlib
import io
import struct
import time
import zlib
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from PIL import Image, ImageOps, UnidentifiedImageError

from transforms import columns
from transforms.read import UnreadableFileError, describe_exception, read_file

IMAGE_SIZE = 299

# Pillow format names this pipeline decodes; Image.open tries no other decoder.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

RESIZE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
DEFAULT_RESIZE_FILTER = "bilinear"

# Pillow's own decompression-bomb threshold; the --max_image_pixels default.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Pillow rejects an image over twice Image.MAX_IMAGE_PIXELS inside Image.open, which would
# cap --max_image_pixels near 179 million pixels and hide the size from the error. Its check
# runs where _open runs ours: after the header is read, before any pixel is decoded.
# NOTE: this setting is process-wide, so other Pillow users in the process lose that guard.
Image.MAX_IMAGE_PIXELS = None

ALPHA_BACKGROUND_RGB = (255, 255, 255)

# Key of the decoded uint8 array in the elements passed from decoding to extraction.
PIXELS = "pixels"

_INTEGER_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# TIFF tags that give the depth and signedness of integer samples.
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339
_TIFF_SIGNED_INTEGER = 2


class ImageDecodeError(ValueError):
    """An image that cannot become model input; the message is the reason for a person."""


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image.

    pixels: uint8 array [IMAGE_SIZE, IMAGE_SIZE, 3], RGB, values in [0, 255].
    width, height: displayed size of the source image in pixels, after EXIF orientation.
    format: Pillow's format name, e.g. "JPEG".
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str


def decode_image(
    data,
    resize_filter=DEFAULT_RESIZE_FILTER,
    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
    size=IMAGE_SIZE,
):
    """Decodes encoded image bytes into a resized RGB uint8 array.

    Raises:
      ImageDecodeError: the bytes are not a supported image, are damaged or truncated,
        or the image has more than max_image_pixels pixels.
    """
    if not data:
        raise ImageDecodeError("file is empty (0 bytes)")
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter must be one of {sorted(RESIZE_FILTERS)}, received {resize_filter!r}")

    check_container(data)
    image = _open(data, max_image_pixels)
    image_format = image.format
    displayed = _load_first_frame(image, max_image_pixels)
    # The TIFF tags that give the sample type are on the opened image only: EXIF
    # orientation returns a copy without them.
    rgb = to_rgb(displayed, integer_sample_type(image))
    resized = rgb.resize((size, size), RESIZE_FILTERS[resize_filter])

    pixels = np.asarray(resized, dtype=np.uint8)
    return DecodedImage(pixels=pixels, width=rgb.width, height=rgb.height, format=image_format)


def _open(data, max_image_pixels):
    """Reads the header only, and checks the pixel count before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError as err:
        sniffed = sniff_format(data)
        if sniffed:
            raise ImageDecodeError(
                f"the file starts like a {sniffed}, but Pillow cannot read this {sniffed} "
                "variant or its header is damaged"
            ) from err
        raise ImageDecodeError(
            f"not an image: the first bytes {data[:16]!r} match none of {', '.join(SUPPORTED_FORMATS)}"
        ) from err
    except MemoryError:
        raise
    except Exception as err:
        # Pillow's plugins raise many exception types on a damaged header.
        raise ImageDecodeError(f"image header is damaged or truncated ({describe_exception(err)})") from err

    _check_pixel_count(image, max_image_pixels)
    return image


def _check_pixel_count(image, max_image_pixels):
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image header gives an empty size {width}x{height}")
    if width * height > max_image_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_image_pixels} (raise --max_image_pixels to accept it)"
        )


def _load_first_frame(image, max_image_pixels):
    """Decodes the first frame and applies EXIF orientation; returns the displayed image."""
    try:
        image.seek(0)
        # A GIF frame may be larger than the screen size in the file header.
        _check_pixel_count(image, max_image_pixels)
        image.load()
        return ImageOps.exif_transpose(image)
    except (ImageDecodeError, MemoryError):
        # A MemoryError means the worker ran out of memory, which says nothing about the file.
        raise
    except Exception as err:
        # Damaged files make Pillow raise OSError, SyntaxError, struct.error and others, and
        # a TIFF tag of the wrong type raises TypeError. One file must not fail the run.
        raise ImageDecodeError(f"image data is damaged or truncated ({describe_exception(err)})") from err


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def sniff_format(data):
    """Names the supported format whose magic bytes start data, or returns None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def check_container(data):
    """Raises ImageDecodeError for a PNG or WebP whose container shows damage or truncation."""
    sniffed = sniff_format(data)
    if sniffed == "PNG":
        check_png_chunks(data)
    elif sniffed == "WEBP":
        declared = struct.unpack("<I", data[4:8])[0] + 8
        if len(data) < declared:
            raise ImageDecodeError(
                f"WEBP is truncated: its RIFF header declares {declared} bytes, but the file has {len(data)}"
            )


_PNG_SIGNATURE_LENGTH = 8
# Length, type and CRC fields around each chunk's data.
_PNG_CHUNK_OVERHEAD = 12


def check_png_chunks(data):
    """Raises ImageDecodeError when a PNG ends inside a chunk or a critical chunk fails its CRC.

    Chunks are read up to IEND; bytes after it are ignored. A bad CRC in an ancillary chunk
    (lower-case first letter, such as tEXt) is ignored, as libpng does by default. A file
    that ends after a whole chunk but before IEND passes here, and Pillow then reports it
    if pixel data is missing.
    """
    view = memoryview(data)
    offset = _PNG_SIGNATURE_LENGTH
    while offset < len(data):
        if offset + 8 > len(data):
            raise ImageDecodeError(
                f"PNG is truncated: the file ends inside the chunk header at byte {offset}"
            )
        length, chunk_type = struct.unpack(">I4s", view[offset : offset + 8])
        name = chunk_type.decode("latin-1")
        end = offset + _PNG_CHUNK_OVERHEAD + length
        if end > len(data):
            raise ImageDecodeError(
                f"PNG is truncated: chunk {name} at byte {offset} needs {end - offset} bytes, "
                f"but the file ends {len(data) - offset} bytes after its start"
            )

        # Bit 5 of the first type byte is clear (upper case) in critical chunks.
        if not chunk_type[0] & 0x20:
            computed = zlib.crc32(view[offset + 4 : end - 4])
            (stored,) = struct.unpack(">I", view[end - 4 : end])
            if computed != stored:
                raise ImageDecodeError(
                    f"PNG is damaged: chunk {name} at byte {offset} stores CRC {stored:#010x}, "
                    f"but its bytes give {computed:#010x}"
                )
        if chunk_type == b"IEND":
            return
        offset = end


def to_rgb(image, sample_type=None):
    """Converts a loaded Pillow image of any mode to 8-bit RGB by the module's rules.

    sample_type: (bits per sample, signed) of integer gray images, by default
    integer_sample_type(image).
    """
    mode = image.mode
    if mode in _INTEGER_GRAY_MODES:
        return _integer_gray_to_rgb(image, sample_type or integer_sample_type(image))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        gray = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")

    has_alpha = mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND_RGB, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if mode == "1":
            image = image.convert("L")
        return image.convert("RGB")
    except ValueError as err:
        raise ImageDecodeError(f"Pillow cannot convert colour mode {mode} to RGB ({err})") from err


def _integer_gray_to_rgb(image, sample_type):
    values = np.asarray(image)
    bits, signed = sample_type
    if bits == 32 and not signed:
        # Pillow stores unsigned 32-bit samples in int32, so values from 2^31 up read negative.
        values = values.view(np.uint32)
    maximum = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    scaled = np.clip(values.astype(np.float64), 0, maximum) * (255.0 / maximum)
    gray = np.rint(scaled).astype(np.uint8)
    rgb = np.repeat(gray[..., np.newaxis], 3, axis=2)

    # A 16-bit gray PNG names one transparent value in its tRNS chunk.
    transparent_value = image.info.get("transparency")
    if isinstance(transparent_value, int):
        rgb[values == transparent_value] = ALPHA_BACKGROUND_RGB
    return Image.fromarray(rgb, mode="RGB")


def integer_sample_type(image):
    """Returns (bits per sample, signed) of an integer gray image, or None for other modes.

    TIFF states both in its tags. Pillow gives other formats mode I;16 only for unsigned
    16-bit samples (16-bit gray PNG), and mode I only for 32-bit integer samples.
    """
    if image.mode not in _INTEGER_GRAY_MODES:
        return None
    default = (16, False) if image.mode.startswith("I;16") else (32, True)
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return default
    bits = _first_value(tags.get(_TIFF_BITS_PER_SAMPLE), default[0])
    sample_format = _first_value(tags.get(_TIFF_SAMPLE_FORMAT), 1)
    return int(bits), sample_format == _TIFF_SIGNED_INTEGER


def _first_value(tag_value, default):
    if tag_value is None:
        return default
    if isinstance(tag_value, tuple):
        return tag_value[0] if tag_value else default
    return tag_value


class DecodeImageFn(beam.DoFn):
    """Reads one matched file and emits its decoded image, or an errors row.

    Main output: dict with path, sha256, width, height, format and pixels (see
    DecodedImage). Tagged output ERRORS_TAG: dict rows of columns.ERRORS_SCHEMA, with
    stage "read" when the bytes cannot be read (see transforms.read.read_file) and
    "decode" when they are not a decodable image.
    """

    ERRORS_TAG = "errors"

    def __init__(self, resize_filter=DEFAULT_RESIZE_FILTER, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        self._resize_filter = resize_filter
        self._max_image_pixels = max_image_pixels
        self._decoded = Metrics.counter("inception_parity", "images_decoded")
        self._failed = Metrics.counter("inception_parity", "images_failed_decode")
        self._decode_msecs = Metrics.distribution("inception_parity", "decode_msecs")

    def process(self, path):
        try:
            data = read_file(path)
        except UnreadableFileError as err:
            self._failed.inc()
            yield self._error_row(path, "read", str(err))
            return

        started = time.perf_counter()
        try:
            decoded = decode_image(data, self._resize_filter, self._max_image_pixels)
        except ImageDecodeError as err:
            self._failed.inc()
            yield self._error_row(path, "decode", str(err))
            return
        self._decode_msecs.update(int((time.perf_counter() - started) * 1000))
        self._decoded.inc()

        yield {
            columns.PATH: path,
            columns.SHA256: hashlib.sha256(data).hexdigest(),
            columns.WIDTH: decoded.width,
            columns.HEIGHT: decoded.height,
            columns.FORMAT: decoded.format,
            PIXELS: decoded.pixels,
        }

    def _error_row(self, path, stage, reason):
        return beam.pvalue.TaggedOutput(
            self.ERRORS_TAG, {columns.PATH: path, columns.STAGE: stage, columns.ERROR: reason}
        )
