"""Deterministic benchmark images: seeded crops of real photos, saved as JPEG and PNG.

Image i of a set depends only on (seed, i), so the first N images of any larger set are
the same files: a folder of 64 images is the first quarter of a folder of 256.
"""

import glob
import os

import numpy as np
from PIL import Image

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Minimum crop side in pixels before the random rescale, capped at the photo's own side.
MIN_CROP_SIDE = 160
SCALE_RANGE = (0.6, 1.4)
# One image in PNG_EVERY is saved as PNG and the rest as JPEG, so that both decoders run.
PNG_EVERY = 4
JPEG_QUALITY_RANGE = (75, 95)


def list_photos(folder):
    """Returns the sorted photo paths of folder; raises FileNotFoundError when there are none."""
    paths = sorted(
        path for path in glob.glob(os.path.join(folder, "*")) if path.lower().endswith(PHOTO_EXTENSIONS)
    )
    if not paths:
        raise FileNotFoundError(f"no JPEG or PNG photos found in {folder!r}; pass --photos FOLDER")
    return paths


def load_photos(folder):
    """Returns the photos of folder as RGB Pillow images, in sorted file order."""
    photos = []
    for path in list_photos(folder):
        with Image.open(path) as image:
            photos.append(image.convert("RGB"))
    return photos


def make_crop(photos, seed, index):
    """Returns (image, extension, save options) of image index of the set drawn from seed."""
    rng = np.random.default_rng([seed, index])
    photo = photos[index % len(photos)]
    width, height = photo.size

    crop_width = int(rng.integers(min(MIN_CROP_SIDE, width), width + 1))
    crop_height = int(rng.integers(min(MIN_CROP_SIDE, height), height + 1))
    left = int(rng.integers(0, width - crop_width + 1))
    top = int(rng.integers(0, height - crop_height + 1))
    crop = photo.crop((left, top, left + crop_width, top + crop_height))

    scale = rng.uniform(*SCALE_RANGE)
    size = (max(1, round(crop_width * scale)), max(1, round(crop_height * scale)))
    crop = crop.resize(size, Image.Resampling.BILINEAR)

    if index % PNG_EVERY == PNG_EVERY - 1:
        return crop, ".png", {"optimize": False}
    quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    return crop, ".jpg", {"quality": quality}


def write_image_set(photos, folder, count, seed):
    """Writes images 0..count-1 of the seeded set into folder, unless it already contains them.

    A marker file beside the folder marks it complete, so that a set interrupted while
    being written is rebuilt. The marker lies outside the folder, so no run reads it.
    Returns the folder.
    """
    marker = f"{folder.rstrip(os.sep)}.done-{count}-seed{seed}"
    if os.path.exists(marker):
        return folder
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(folder, "*")):
        os.remove(stale)

    for index in range(count):
        image, extension, options = make_crop(photos, seed, index)
        image.save(os.path.join(folder, f"crop-{index:05d}{extension}"), **options)
    with open(marker, "w", encoding="utf-8"):
        pass
    return folder


def image_paths(folder):
    """Returns the sorted image files of a folder written by write_image_set."""
    return sorted(path for path in glob.glob(os.path.join(folder, "crop-*")))
