"""Progress of a run: workers count the images they finished into small files in a local
folder, and the launching process sums them into a progress line."""

import json
import logging
import os
import threading
import time
import uuid

_LOGGER = logging.getLogger(__name__)


class ProgressCounter:
    """Counts images one DoFn instance finished; writes the count every interval_secs.

    Picklable: the file name and the count start when the first images are added in the
    worker, so each DoFn instance in each process has its own file.
    """

    def __init__(self, folder, interval_secs=2.0):
        self._folder = folder
        self._interval_secs = interval_secs
        self._done = 0
        self._file = None
        self._written_at = None

    def add(self, count):
        self._done += count
        now = time.monotonic()
        if self._written_at is None or now - self._written_at >= self._interval_secs:
            self.write()
            self._written_at = now

    def write(self):
        if self._file is None:
            os.makedirs(self._folder, exist_ok=True)
            self._file = os.path.join(self._folder, f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        staging = self._file + ".tmp"
        with open(staging, "w", encoding="utf-8") as handle:
            json.dump({"done": self._done}, handle)
        os.replace(staging, self._file)


def read_done(folder):
    """Sums the counts of every progress file in folder."""
    total = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                total += json.load(handle)["done"]
        except (OSError, ValueError, KeyError):
            continue
    return total


def format_duration(secs):
    secs = int(round(secs))
    hours, rest = divmod(secs, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"


def format_progress(done, total, rate):
    """Formats one progress line with images done, rate (images/s) and time left; total may be None."""
    if not total:
        return f"Progress: {done} images, {rate:.1f} images/s"
    percent = 100.0 * done / total
    line = f"Progress: {done} of {total} images ({percent:.0f}%), {rate:.1f} images/s"
    if rate > 0 and done < total:
        line += f", about {format_duration((total - done) / rate)} left"
    return line


class ProgressMonitor:
    """Logs a progress line every interval_secs from a background thread.

    total_fn computes the number of images expected, or None when it is unknown. It may
    list the whole input, so it runs on the background thread too.
    """

    def __init__(self, folder, total_fn, interval_secs=15.0):
        self._folder = folder
        self._total_fn = total_fn
        self._interval_secs = interval_secs
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self):
        try:
            total = self._total_fn()
        except (OSError, ValueError) as err:
            _LOGGER.warning("Cannot count the input images for progress lines: %s", err)
            total = None
        # The rate counts from the first finished batch, so that model loading and
        # tracing do not make the time left look longer than it is.
        first = None
        last_done = -1
        while not self._stopped.wait(self._interval_secs):
            done, now = read_done(self._folder), time.monotonic()
            if done and first is None:
                first = (done, now)
            rate = (done - first[0]) / (now - first[1]) if first and now > first[1] else 0.0
            if done != last_done:
                _LOGGER.info(format_progress(done, total, rate))
                last_done = done
