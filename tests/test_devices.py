"""Device choice per worker process, tested without GPUs: fake GPU lists and lock files."""

import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from tests.conftest import REPO_ROOT
from transforms import devices

CLAIM_SCRIPT = textwrap.dedent(
    """
    import sys
    from transforms.devices import claim_index
    print(claim_index(int(sys.argv[1]), sys.argv[2]), flush=True)
    sys.stdin.read()
    """
)


def start_claimer(count, lock_dir):
    process = subprocess.Popen(
        [sys.executable, "-c", CLAIM_SCRIPT, str(count), str(lock_dir)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, int(process.stdout.readline())


def stop(process):
    process.stdin.close()
    process.wait(timeout=30)


def test_processes_claim_different_devices(tmp_path):
    first, first_index = start_claimer(3, tmp_path)
    second, second_index = start_claimer(3, tmp_path)
    third, third_index = start_claimer(3, tmp_path)
    assert sorted([first_index, second_index, third_index]) == [0, 1, 2]
    for process in (first, second, third):
        stop(process)


def test_claim_is_released_when_process_ends(tmp_path):
    first, first_index = start_claimer(2, tmp_path)
    second, _ = start_claimer(2, tmp_path)
    stop(first)
    third, third_index = start_claimer(2, tmp_path)
    assert third_index == first_index
    stop(second)
    stop(third)


@pytest.fixture
def fake_gpus(monkeypatch):
    """Makes TF report the given number of GPUs; memory growth calls are recorded."""
    grown = []

    def install(count):
        gpus = [
            tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU")
            for i in range(count)
        ]
        monkeypatch.setattr(
            tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else []
        )
        monkeypatch.setattr(
            tf.config.experimental, "set_memory_growth", lambda gpu, on: grown.append((gpu.name, on))
        )
        return grown

    yield install
    devices.release_claims()


def test_auto_without_gpu_uses_cpu(fake_gpus):
    fake_gpus(0)
    assert devices.select_device("auto") == "/CPU:0"


def test_auto_claims_a_gpu_and_grows_memory(fake_gpus, tmp_path):
    grown = fake_gpus(2)
    assert devices.select_device("auto", lock_dir=tmp_path) in ("/GPU:0", "/GPU:1")
    assert sorted(grown) == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]


def test_explicit_gpu_index(fake_gpus):
    fake_gpus(2)
    assert devices.select_device("gpu:1") == "/GPU:1"


def test_missing_gpu_index_raises(fake_gpus):
    fake_gpus(2)
    with pytest.raises(ValueError, match="only 2 GPU"):
        devices.select_device("gpu:2")


def test_gpu_requested_without_gpu_raises(fake_gpus):
    fake_gpus(0)
    with pytest.raises(ValueError, match="sees no GPU"):
        devices.select_device("gpu")


def test_cpu_never_looks_for_gpus(fake_gpus):
    grown = fake_gpus(4)
    assert devices.select_device("cpu") == "/CPU:0"
    assert grown == []


@pytest.mark.parametrize("value", ["tpu", "gpu:", "gpu:x", "cuda:0", ""])
def test_invalid_device_value_raises(value):
    with pytest.raises(ValueError, match="--device must be one of"):
        devices.parse_device(value)
