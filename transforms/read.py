"""Matching of input image files: a folder (recursive) or a glob on any Beam filesystem."""

import os
import posixpath

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import columns

# Extensions matched case-insensitively; a matched file with any other is skipped.
IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp")
)

SKIPPED_TAG = "skipped"

_GLOB_CHARACTERS = frozenset("*?[")


def resolve_input_pattern(input_path):
    """Turns --input into a Beam file pattern and the root that relative names start from.

    A glob is used as given. A folder (local, or any path that is not an existing file)
    becomes FOLDER/** so that its subfolders are matched too. An existing file is matched
    alone.

    Returns:
      (pattern, root): root is the folder part above the first glob character.
    """
    if any(character in _GLOB_CHARACTERS for character in input_path):
        first_glob = min(input_path.index(c) for c in _GLOB_CHARACTERS if c in input_path)
        root = input_path[:first_glob].rsplit("/", 1)[0]
        return input_path, root

    is_remote = "://" in input_path
    if not is_remote and os.path.isdir(input_path):
        folder = os.path.abspath(input_path)
        return FileSystems.join(folder, "**"), folder
    if not is_remote or not input_path.endswith("/"):
        if FileSystems.exists(input_path):
            return input_path, posixpath.dirname(input_path)
    folder = input_path.rstrip("/")
    return folder + "/**", folder


def skip_reason(path, root):
    """Gives why a matched file is not an image to decode, or None when it is one.

    Hidden files and files inside hidden folders below the root (names starting with
    '.') are skipped, as are files whose extension is not an image extension.
    """
    relative = path[len(root) :] if root and path.startswith(root) else path
    parts = [part for part in relative.replace("\\", "/").split("/") if part]
    if any(part.startswith(".") for part in parts):
        return "hidden file or folder (name starts with '.')"
    extension = os.path.splitext(path)[1].lower()
    if extension not in IMAGE_EXTENSIONS:
        shown = extension or "no extension"
        return f"not an image extension ({shown}); matched are {', '.join(sorted(IMAGE_EXTENSIONS))}"
    return None


class _ClassifyMatchesFn(beam.DoFn):
    def __init__(self, root):
        self._root = root
        self._matched = Metrics.counter("inception_parity", "files_matched")
        self._skipped = Metrics.counter("inception_parity", "files_skipped")

    def process(self, metadata):
        self._matched.inc()
        reason = skip_reason(metadata.path, self._root)
        if reason is None:
            yield metadata.path
        else:
            self._skipped.inc()
            yield beam.pvalue.TaggedOutput(SKIPPED_TAG, {columns.PATH: metadata.path, columns.REASON: reason})


class MatchImageFiles(beam.PTransform):
    """Matches the input and splits image paths from skipped files.

    Output: a DoOutputsTuple whose main output holds image paths, spread over workers by
    a Reshuffle, and whose SKIPPED_TAG output holds rows of columns.SKIPPED_SCHEMA.
    """

    def __init__(self, input_path):
        super().__init__()
        self._pattern, self._root = resolve_input_pattern(input_path)

    @property
    def pattern(self):
        return self._pattern

    def expand(self, pbegin):
        classified = (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self._pattern, fileio.EmptyMatchTreatment.ALLOW)
            | "ClassifyMatches"
            >> beam.ParDo(_ClassifyMatchesFn(self._root)).with_outputs(SKIPPED_TAG, main="images")
        )
        # Matching runs on one worker; without a reshuffle every file would stay there.
        images = classified.images | "SpreadImagePaths" >> beam.Reshuffle()
        return images, classified[SKIPPED_TAG]


def check_local_input(input_path):
    """Raises FileNotFoundError when a local --input has no existing folder or file.

    Remote inputs (gs://, s3://, ...) are not checked: listing them is the match's job.
    """
    if "://" in input_path:
        return
    _, root = resolve_input_pattern(input_path)
    if not os.path.exists(root or "."):
        raise FileNotFoundError(f"--input {input_path!r} not found: no file or folder at {root or '.'!r}")
