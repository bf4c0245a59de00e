"""Runs one command as a child process and measures its wall time, CPU time and peak memory.

The child and all its descendants are sampled every SAMPLE_SECS, because Beam's
multi-process mode starts worker processes.
  * Peak memory is the largest sum of resident set sizes (RSS) over the tree. Pages
    shared between processes (the Python interpreter, TensorFlow's libraries) are
    counted once per process, as RSS counts them.
  * CPU time is user + system seconds over the tree. getrusage(RUSAGE_CHILDREN) counts
    only descendants that were waited for, and sampling misses each process's last
    SAMPLE_SECS, so the larger of the two is kept. Both are lower bounds, and commands
    must run one at a time for the getrusage figure to be theirs.
"""

import os
import resource
import subprocess
import time

import psutil

SAMPLE_SECS = 0.2
MIB = 1024 * 1024
LOG_TAIL_CHARS = 4000


class CommandFailedError(RuntimeError):
    """A measured command exited with a non-zero status; the message contains the end of its stderr."""


class TreeSampler:
    """Peak summed RSS and last-seen CPU seconds of each process in a process tree."""

    def __init__(self, root_pid):
        self._root = psutil.Process(root_pid)
        self.peak_rss_bytes = 0
        self._cpu_secs_by_pid = {}

    def sample(self):
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss_bytes = 0
        for process in processes:
            try:
                with process.oneshot():
                    rss_bytes += process.memory_info().rss
                    times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self._cpu_secs_by_pid[process.pid] = times.user + times.system
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes)

    @property
    def cpu_secs(self):
        return sum(self._cpu_secs_by_pid.values())

    def kill_tree(self):
        """Kills the root and every process it started (after a timeout)."""
        try:
            processes = [*self._root.children(recursive=True), self._root]
        except psutil.NoSuchProcess:
            return
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(processes, timeout=10)


def run_measured(command, log_prefix, env=None, timeout_secs=None):
    """Runs command to completion; returns wall_secs, cpu_secs, peak_rss_mib and the log paths.

    stdout and stderr go to log_prefix + ".out" / ".err". Raises CommandFailedError when
    the command fails, and subprocess.TimeoutExpired (after killing it) when it runs past
    timeout_secs.
    """
    out_path, err_path = log_prefix + ".out", log_prefix + ".err"
    os.makedirs(os.path.dirname(log_prefix), exist_ok=True)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        waited_cpu_before = _waited_children_cpu_secs()
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        sampler = TreeSampler(child.pid)
        while True:
            sampler.sample()
            try:
                child.wait(timeout=SAMPLE_SECS)
                break
            except subprocess.TimeoutExpired as wait_expired:
                if timeout_secs is not None and time.perf_counter() - started > timeout_secs:
                    sampler.kill_tree()
                    raise subprocess.TimeoutExpired(command, timeout_secs) from wait_expired
        wall_secs = time.perf_counter() - started
        waited_cpu_secs = _waited_children_cpu_secs() - waited_cpu_before

    if child.returncode != 0:
        raise CommandFailedError(
            f"{command[0]} exited with status {child.returncode}; end of {err_path}:\n{read_tail(err_path)}"
        )
    return {
        "wall_secs": wall_secs,
        "cpu_secs": max(waited_cpu_secs, sampler.cpu_secs),
        "peak_rss_mib": sampler.peak_rss_bytes / MIB,
        "stdout": out_path,
        "stderr": err_path,
    }


def _waited_children_cpu_secs():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_tail(path, chars=LOG_TAIL_CHARS):
    """Returns the last chars characters of a text file."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()[-chars:]
