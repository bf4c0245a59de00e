"""Decoding of image bytes into the 299×299 8-bit RGB arrays both extractors take.

Conversion rules (also in the README):
  * Only the first frame of animated GIF/WebP and multi-page TIFF is used.
  * EXIF orientation is applied, so features follow what an image viewer shows, and
    width/height are the displayed size.
  * 16-bit images (Pillow modes I;16*, and I as Pillow stores 16-bit PNG/TIFF gray) are
    scaled from [0, 65535] to [0, 255] by dividing by 257 and rounding. 32-bit float
    images (mode F) are read as intensities in [0, 1]; values outside are clipped and NaN
    becomes 0.
  * Images with transparency (RGBA, LA, PA, palette with a transparent index) are
    alpha-composited onto an opaque white background.
  * Grayscale, palette, CMYK and YCbCr images are converted to RGB with Pillow.
  * The result is resized to 299×299 with the chosen Pillow filter, without keeping the
    aspect ratio: every pixel of the image reaches the model.
"""

import hashlib
import io
import struct
import time
import warnings
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import BeamIOError, FileSystems
from apache_beam.metrics import Metrics
from PIL import Image, ImageOps, UnidentifiedImageError

from transforms import columns

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

ALPHA_BACKGROUND_RGB = (255, 255, 255)

# Key of the decoded uint8 array in the elements passed from decoding to extraction.
PIXELS = "pixels"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


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
      ImageDecodeError: the bytes are not a supported image, are damaged, or the image
        has more than max_image_pixels pixels.
    """
    if not data:
        raise ImageDecodeError("file is empty (0 bytes)")
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter must be one of {sorted(RESIZE_FILTERS)}, received {resize_filter!r}")

    image = _open(data, max_image_pixels)
    image_format = image.format
    try:
        # The first frame of an animation or of a multi-page TIFF.
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        resized = rgb.resize((size, size), RESIZE_FILTERS[resize_filter])
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as err:
        raise ImageDecodeError(f"image data is damaged or truncated ({_describe(err)})") from err

    pixels = np.asarray(resized, dtype=np.uint8)
    return DecodedImage(pixels=pixels, width=rgb.width, height=rgb.height, format=image_format)


def _open(data, max_image_pixels):
    """Reads the header only, and checks the pixel count before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard warns above its threshold; ours is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(
            f"image claims more pixels than Pillow allows ({err}); "
            f"the --max_image_pixels limit is {max_image_pixels}"
        ) from err
    except UnidentifiedImageError as err:
        sniffed = sniff_format(data)
        if sniffed:
            raise ImageDecodeError(
                f"the file starts like a {sniffed}, but Pillow cannot read this {sniffed} "
                "variant or its header is damaged"
            ) from err
        raise ImageDecodeError(
            f"not an image: the bytes match none of {', '.join(SUPPORTED_FORMATS)}"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        raise ImageDecodeError(f"image header is damaged ({_describe(err)})") from err

    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image header gives an empty size {width}x{height}")
    if width * height > max_image_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_image_pixels} (raise --max_image_pixels to accept it)"
        )
    return image


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


def to_rgb(image):
    """Converts a loaded Pillow image of any mode to 8-bit RGB by the module's rules."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        gray = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        image = image.convert("L")
    return image.convert("RGB")


def _describe(err):
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class DecodeImageFn(beam.DoFn):
    """Reads one matched file and emits its decoded image, or an errors row.

    Main output: dict with path, sha256, width, height, format and pixels (see
    DecodedImage). Tagged output ERRORS_TAG: dict rows of columns.ERRORS_SCHEMA.
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
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                data = handle.read()
        except (OSError, BeamIOError) as err:
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                self.ERRORS_TAG,
                {
                    columns.PATH: path,
                    columns.STAGE: "read",
                    columns.ERROR: f"cannot read file ({_describe(err)})",
                },
            )
            return

        started = time.perf_counter()
        try:
            decoded = decode_image(data, self._resize_filter, self._max_image_pixels)
        except ImageDecodeError as err:
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                self.ERRORS_TAG, {columns.PATH: path, columns.STAGE: "decode", columns.ERROR: str(err)}
            )
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
