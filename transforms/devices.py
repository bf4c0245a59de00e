"""Choice of the TensorFlow device each worker process runs both extractors on."""

import fcntl
import logging
import os
import re
import tempfile

import tensorflow as tf

_LOGGER = logging.getLogger(__name__)

DEVICE_CHOICES_HELP = "auto, cpu, gpu or gpu:N"
_GPU_INDEX = re.compile(r"^gpu:(\d+)$")

# Lock files stay open for the life of the process: the lock is the claim.
_held_claims = {}


def parse_device(value):
    """Validates a --device value; returns it lower-cased."""
    device = value.strip().lower()
    if device in ("auto", "cpu", "gpu") or _GPU_INDEX.match(device):
        return device
    raise ValueError(f"--device must be one of {DEVICE_CHOICES_HELP}, received {value!r}")


def claim_index(count, lock_dir=None, namespace="gpu"):
    """Claims one of count devices for this process and returns its index.

    Each worker process on a machine takes the first index whose lock file no other
    living process holds (fcntl locks vanish with their process). When every index is
    held, processes share them, spread by process id.
    """
    if count <= 0:
        raise ValueError(f"count must be positive, received {count}")
    if namespace in _held_claims:
        return _held_claims[namespace][0]

    lock_dir = lock_dir or os.path.join(tempfile.gettempdir(), "inception-parity-device-locks")
    os.makedirs(lock_dir, exist_ok=True)
    for index in range(count):
        handle = open(os.path.join(lock_dir, f"{namespace}-{index}.lock"), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held_claims[namespace] = (index, handle)
        return index

    index = os.getpid() % count
    _LOGGER.warning("All %d %s devices are claimed; sharing %s:%d", count, namespace, namespace, index)
    return index


def release_claims():
    """Drops this process's device claims (tests; a process's claims end with it)."""
    for _, handle in _held_claims.values():
        handle.close()
    _held_claims.clear()


class DeviceNotFoundError(ValueError):
    """--device names a GPU that TensorFlow does not see."""


def check_device_exists(requested):
    """Raises DeviceNotFoundError, with what to pass instead, when --device names a GPU TF cannot see."""
    requested = parse_device(requested)
    if requested in ("auto", "cpu"):
        return
    count = len(tf.config.list_physical_devices("GPU"))
    match = _GPU_INDEX.match(requested)
    index = int(match.group(1)) if match else 0
    if index >= count:
        seen = "no GPU" if count == 0 else f"only {count} GPU(s): gpu:0 to gpu:{count - 1}"
        raise DeviceNotFoundError(
            f"--device {requested} was requested, but TensorFlow sees {seen}; pass --device auto or cpu"
        )


def select_device(requested, lock_dir=None):
    """Returns the TF device name ("/CPU:0" or "/GPU:i") for a parsed --device value.

    GPU memory growth is turned on for every GPU, so that several worker processes can
    share one. A GPU that was asked for but does not exist raises ValueError, because TF
    would otherwise run on the CPU without a word.
    """
    requested = parse_device(requested)
    if requested == "cpu":
        return "/CPU:0"

    gpus = tf.config.list_physical_devices("GPU")
    _enable_memory_growth(gpus)
    if not gpus:
        if requested == "auto":
            return "/CPU:0"
        raise ValueError(f"--device {requested} was requested, but TensorFlow sees no GPU")

    match = _GPU_INDEX.match(requested)
    if match:
        index = int(match.group(1))
        if index >= len(gpus):
            raise ValueError(
                f"--device {requested} was requested, but TensorFlow sees only "
                f"{len(gpus)} GPU(s): gpu:0 to gpu:{len(gpus) - 1}"
            )
        return f"/GPU:{index}"
    return f"/GPU:{claim_index(len(gpus), lock_dir)}"


def _enable_memory_growth(gpus):
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            # Already initialised in this process: the setting it has stays.
            pass


def configure_threads(intra_op_threads):
    """Sets TensorFlow's intra-op thread count for this process; 0 keeps TF's default.

    TF reads the setting once, when its runtime starts. A process where TF already ran
    keeps the count it started with and logs a warning.
    """
    if not intra_op_threads:
        return
    if tf.config.threading.get_intra_op_parallelism_threads() == intra_op_threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    except RuntimeError:
        _LOGGER.warning(
            "TensorFlow already started in process %d; it keeps its thread count instead of %d",
            os.getpid(),
            intra_op_threads,
        )
