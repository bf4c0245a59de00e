"""Matching and reading of input image files: a folder (recursive) or a glob on any Beam
filesystem."""

import errno
import logging
import os
import posixpath
import re
import stat

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes, FileMetadata, FileSystem
from apache_beam.io.filesystems import BeamIOError, FileSystems
from apache_beam.metrics import Metrics

from transforms import columns

_LOGGER = logging.getLogger(__name__)

# Extensions matched case-insensitively; a matched file with any other is skipped.
IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp")
)

SKIPPED_TAG = "skipped"

HIDDEN_REASON = "hidden file or folder (name starts with '.')"
NOT_UTF8_REASON = (
    "file name is not valid UTF-8 (each invalid byte is shown as \\xNN): Beam and Parquet "
    "store paths as UTF-8 text, so rename the file to process it"
)
FOLDER_LINK_REASON = (
    "symbolic link to a folder: links to folders are not followed, so that no folder is "
    "matched twice or in a cycle"
)

_GLOB_CHARACTERS = frozenset("*?[")


class UnreadableFileError(Exception):
    """A matched file whose bytes cannot be read; the message is the reason for a person."""


def is_local_path(path):
    """Tells whether path is on the local filesystem rather than behind a scheme (gs://, s3://)."""
    return "://" not in path


def describe_exception(err):
    """Formats an exception as "Type: message" for error rows."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def resolve_input_pattern(input_path):
    """Turns --input into a Beam file pattern and the root that relative names start from.

    A glob is used as given. A folder (local, or any path that is not an existing file)
    becomes FOLDER/** so that its subfolders are matched too. An existing file is matched
    alone.

    An existing local folder or file is taken literally even when its name contains glob
    characters ("photos [2019]"): they are escaped in the pattern.

    A local input is made absolute first, so that stored paths do not depend on the
    working directory (an incremental run from another folder finds the same paths).

    Returns:
      (pattern, root): root is the folder part above the first glob character.
    """
    is_remote = "://" in input_path
    if not is_remote:
        input_path = os.path.abspath(input_path)
    if not is_remote and os.path.isdir(input_path):
        folder = os.path.abspath(input_path)
        return FileSystems.join(escape_glob(folder), "**"), folder
    if not is_remote and os.path.isfile(input_path):
        return escape_glob(input_path), posixpath.dirname(input_path)

    if any(character in _GLOB_CHARACTERS for character in input_path):
        first_glob = min(input_path.index(c) for c in _GLOB_CHARACTERS if c in input_path)
        root = input_path[:first_glob].rsplit("/", 1)[0]
        return input_path, root

    if not is_remote or not input_path.endswith("/"):
        if FileSystems.exists(input_path):
            return input_path, posixpath.dirname(input_path)
    folder = input_path.rstrip("/")
    return folder + "/**", folder


def escape_glob(path):
    """Escapes the glob characters of a literal path for a Beam file pattern.

    Beam patterns have no escape character, but a one-character class such as "[*]"
    matches that character alone.
    """
    return "".join(f"[{character}]" if character in _GLOB_CHARACTERS else character for character in path)


def match_files(pattern):
    """Lists the files a pattern matches, as FileMetadata: local ones by list_local_files,
    remote ones by Beam's FileSystems.match."""
    if is_local_path(pattern):
        return list_local_files(pattern)
    return FileSystems.match([pattern])[0].metadata_list


def list_local_files(pattern):
    """Lists the local entries that match a Beam file pattern, as FileMetadata sorted by path.

    Beam's LocalFileSystem listing (apache_beam 2.77) drops every entry whose size cannot
    be read, so broken symlinks and symlink loops vanish without a trace. This listing
    keeps every entry that is not a folder: regular files, symlinks whether or not they
    resolve, named pipes, sockets and devices. Symlinks to folders are listed but not
    entered. A subfolder that cannot be listed is listed itself when the pattern matches
    its path (as FOLDER/** does), so that reading reports it. The pattern has Beam's
    syntax: '*' stays inside one folder and '**' crosses folders.

    Raises:
      OSError: the folder above the first glob character exists but cannot be listed.
    """
    prefix, glob_start = _literal_prefix(pattern)
    if glob_start == len(pattern):
        paths = [prefix] if os.path.lexists(prefix) and not os.path.isdir(prefix) else []
    else:
        # As in Beam, "/a/b*" is listed from "/a", and "/a/b/*" from "/a/b". Only the part
        # after the literal prefix becomes a regular expression, so escapes such as "[[]"
        # never reach the re module, which warns about them as possible nested sets.
        base = posixpath.dirname(prefix)
        matcher = re.compile(FileSystem.translate_pattern(pattern[glob_start:]))
        paths = [
            path
            for path in _walk_entries(base)
            if path.startswith(prefix) and matcher.match(path, len(prefix))
        ]
    return [_metadata(path) for path in sorted(paths)]


def _literal_prefix(pattern):
    """Returns (the text before the first unescaped glob character, that character's index).

    Escaped characters ("[*]", see escape_glob) count as literal, so that an escaped input
    folder is listed from itself and not from its parent. The index is len(pattern) when
    the whole pattern is literal.
    """
    literal = []
    position = 0
    while position < len(pattern):
        character = pattern[position]
        if character == "[" and pattern[position + 2 : position + 3] == "]":
            literal.append(pattern[position + 1])
            position += 3
        elif character in _GLOB_CHARACTERS:
            break
        else:
            literal.append(character)
            position += 1
    return "".join(literal), position


def _walk_entries(base):
    """Yields every entry below base that is not a folder, and each subfolder that cannot
    be listed. Symlinks to folders are yielded, not entered."""
    if base and not os.path.isdir(base):
        return
    pending = [base]
    while pending:
        folder = pending.pop()
        try:
            entries = _scan_folder(folder)
        except OSError as err:
            if folder == base:
                raise
            _LOGGER.warning("Cannot list folder %s (%s), so it is reported as an errors row", folder, err)
            yield folder
            continue
        for name, is_folder in entries:
            # A relative pattern such as "*.jpg" has an empty base, and its matches carry
            # no "./" prefix.
            path = posixpath.join(folder, name) if folder else name
            if is_folder:
                pending.append(path)
            else:
                yield path


def _scan_folder(folder):
    """Returns (name, is a real folder) for each entry of folder; links are not followed."""
    entries = []
    with os.scandir(folder or ".") as scanner:
        for entry in scanner:
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                # The entry vanished or cannot be examined; reading it reports why.
                is_folder = False
            entries.append((entry.name, is_folder))
    return entries


def _metadata(path):
    # A broken link or a loop has no target to measure, so the link itself is measured.
    for stat_function in (os.stat, os.lstat):
        try:
            info = stat_function(path)
        except OSError:
            continue
        return FileMetadata(path, info.st_size, info.st_mtime)
    return FileMetadata(path, 0)


def display_path(path):
    """Returns path as valid UTF-8 text: each byte of a file name that is not UTF-8 (which
    Python keeps as a surrogate escape) becomes the text \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def skip_reason(path, root):
    """Gives why a matched file is not an image to decode, or None when it is one.

    The checks run in this order:
      1. hidden files and files inside hidden folders below the root (names starting
         with '.'),
      2. local symlinks to folders,
      3. extensions that are not image extensions,
      4. names that are not valid UTF-8, which no Beam step or Parquet table can carry.
    A local folder is matched only when it cannot be listed. It is not skipped, so that
    reading reports it as an error.
    """
    relative = path[len(root) :] if root and path.startswith(root) else path
    parts = [part for part in relative.replace("\\", "/").split("/") if part]
    if any(part.startswith(".") for part in parts):
        return HIDDEN_REASON
    if is_local_path(path) and os.path.isdir(path):
        return FOLDER_LINK_REASON if os.path.islink(path) else None
    extension = os.path.splitext(path)[1].lower()
    if extension not in IMAGE_EXTENSIONS:
        shown = extension or "no extension"
        return f"not an image extension ({shown}); matched are {', '.join(sorted(IMAGE_EXTENSIONS))}"
    if display_path(path) != path:
        return NOT_UTF8_REASON
    return None


def is_inside(path, folder):
    """Tells whether path lies in folder (both absolute local paths or both URLs)."""
    if not folder:
        return False
    folder = folder.rstrip("/") + "/"
    return path.startswith(folder)


def output_folder_to_exclude(output):
    """Normalises --output so that the input listing can leave the job's own files out."""
    return output if "://" in output else os.path.abspath(output)


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
            row = {columns.PATH: display_path(metadata.path), columns.REASON: reason}
            yield beam.pvalue.TaggedOutput(SKIPPED_TAG, row)


class MatchImageFiles(beam.PTransform):
    """Matches the input and splits image paths from skipped files.

    Files are listed by match_files, so that local broken symlinks, symlink loops and
    other unreadable entries reach decoding and become errors rows.

    Output: a DoOutputsTuple. Its main output contains image paths, spread over workers by
    a Reshuffle, and its SKIPPED_TAG output contains rows of columns.SKIPPED_SCHEMA.
    """

    def __init__(self, input_path, exclude_folder=None):
        super().__init__()
        self._pattern, self._root = resolve_input_pattern(input_path)
        self._exclude_folder = exclude_folder

    @property
    def pattern(self):
        return self._pattern

    def expand(self, pbegin):
        # Listing runs in a step, as fileio.MatchFiles does, so it runs when the pipeline runs.
        matches = (
            pbegin
            | "CreatePattern" >> beam.Create([self._pattern])
            | "MatchFiles" >> beam.FlatMap(_match_outside, self._exclude_folder)
        )
        classified = matches | "ClassifyMatches" >> beam.ParDo(_ClassifyMatchesFn(self._root)).with_outputs(
            SKIPPED_TAG, main="images"
        )
        # Matching runs on one worker; without a reshuffle every file would stay there.
        images = classified.images | "SpreadImagePaths" >> beam.Reshuffle()
        return images, classified[SKIPPED_TAG]


def read_file(path):
    """Reads all bytes of a matched file.

    A local path must lead to a regular file, after following symlinks. It is opened
    without blocking, so a named pipe named like an image cannot stall a worker, and it
    is checked on the open descriptor, so it cannot be swapped after the check. Other
    paths are read through Beam's FileSystems.

    Raises:
      UnreadableFileError: the message names the cause, such as "symlink loop", "broken
        symlink", "permission denied" or "not a regular file".
    """
    if is_local_path(path):
        return _read_local_file(path)
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read()
    except (OSError, BeamIOError) as err:
        raise UnreadableFileError(f"cannot read file ({describe_exception(err)})") from err


def _read_local_file(path):
    try:
        # Without O_NONBLOCK, opening a named pipe waits for a writer forever.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise UnreadableFileError(_open_failure_reason(path, err)) from err

    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFileError(_not_regular_reason(path, mode))
        with open(descriptor, "rb", closefd=False) as handle:
            return handle.read()
    except OSError as err:
        raise UnreadableFileError(f"reading the file failed ({describe_exception(err)})") from err
    finally:
        os.close(descriptor)


def _open_failure_reason(path, err):
    if err.errno == errno.ELOOP:
        return (
            f"symlink loop: the link points to {_link_target(path)!r}, and following the links "
            "never reaches a file"
        )
    if err.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symlink: following the link to {_link_target(path)!r} reaches no existing file"
    if err.errno == errno.ENOENT:
        return "file not found: it was removed or renamed after matching"

    # A folder or socket that cannot be opened is reported by its kind, not by the errno.
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        return _not_regular_reason(path, mode)
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: the file cannot be opened for reading ({describe_exception(err)})"
    return f"cannot open the file ({describe_exception(err)})"


def _link_target(path):
    try:
        return os.readlink(path)
    except OSError:
        return "(unreadable link)"


_NON_REGULAR_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular_reason(path, mode):
    if stat.S_ISDIR(mode):
        return _folder_reason(path)
    kind = next(
        (name for test, name in _NON_REGULAR_KINDS if test(mode)), f"file type {stat.S_IFMT(mode):#o}"
    )
    return f"not a regular file but {kind}; only regular files are read"


def _folder_reason(path):
    try:
        with os.scandir(path):
            pass
    except OSError as err:
        return f"folder cannot be listed ({describe_exception(err)}), so the files in it were not matched"
    return "a folder, not a file"


def check_local_input(input_path):
    """Raises FileNotFoundError when a local --input has no existing folder or file.

    Remote inputs (gs://, s3://, ...) are not checked: listing them is the match's job.
    """
    if "://" in input_path:
        return
    _, root = resolve_input_pattern(input_path)
    if not os.path.exists(root or "."):
        raise FileNotFoundError(f"--input {input_path!r} not found: no file or folder at {root or '.'!r}")


def _match_outside(pattern, exclude_folder):
    """Matches pattern, leaving out everything under exclude_folder (the job's --output,
    when it lies inside --input: a run must never read its own files as input)."""
    return [metadata for metadata in match_files(pattern) if not is_inside(metadata.path, exclude_folder)]


def list_image_paths(input_path, exclude_folder=None):
    """Lists, sorted, the matched paths of --input that a run would try to decode."""
    pattern, root = resolve_input_pattern(input_path)
    matched = _match_outside(pattern, exclude_folder)
    return sorted(metadata.path for metadata in matched if skip_reason(metadata.path, root) is None)
