"""The six measurements of the benchmark; each returns a JSON-ready dict.

Every measurement runs its workload in a child process (bench_process.run_measured), so
that no TensorFlow state, thread pool or Keras dtype policy leaks from one to the next.
Throughput of a whole command (plain script, stock RunInference, pipeline) comes from two
runs over N1 < N2 images: steady images/s = (N2 - N1) / (T2 - T1) and start-up =
T1 - N1 / steady, where T is the command's wall time.
"""

import glob
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
from bench_process import run_measured

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
FLOAT32, BFLOAT16 = "float32", "bfloat16"
MULTI_PROCESS_FLAGS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")

_PREFLIGHT_LOG = re.compile(r"Both models load and run \(checked in ([\d.]+) s\)")
_WORKER_LOAD_LOG = re.compile(r"Loaded both extractors on \S+ in ([\d.]+) s")


@dataclass
class BenchContext:
    """Settings every measurement needs: interpreter, CLI, models, image folders and limits."""

    work: str
    python: str
    cli: str
    hub_model: str
    keras_weights: str
    batch_size: int
    # Image count -> folder that contains exactly that many images.
    folders: dict
    sizes: tuple
    memory_sizes: tuple
    env: dict = field(default_factory=dict)

    def timeout_secs(self, images):
        # Generous: a run slower than 0.5 images/s after 10 minutes of start-up is broken.
        return 600 + 2 * images

    def run_dir(self, label):
        """Returns an empty folder for one run's output and logs."""
        folder = os.path.join(self.work, "runs", label)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        return folder


def steady_state(runs):
    """Fits steady images/s and start-up seconds through the first and last run.

    Also fits the CPU seconds per image, which other processes on the same cores disturb
    less than wall time.
    """
    first, last = runs[0], runs[-1]
    extra_secs = last["wall_secs"] - first["wall_secs"]
    extra_images = last["images"] - first["images"]
    result = {
        "runs": runs,
        "steady_images_per_sec": None,
        "startup_secs": None,
        "steady_cpu_secs_per_image": (last["cpu_secs"] - first["cpu_secs"]) / extra_images,
    }
    if extra_secs <= 0:
        # More images took less time: the machine was too noisy for this pair of runs.
        result["note"] = "larger run was not slower; no steady state can be fitted"
        return result
    steady = extra_images / extra_secs
    result["steady_images_per_sec"] = steady
    result["startup_secs"] = first["wall_secs"] - first["images"] / steady
    return result


def measure_sizes(ctx, label, sizes, make_command, check_output):
    """Runs make_command(folder, run_dir) once per image count; returns steady_state's fit.

    check_output(run_dir, images) returns details of the run, and raises ValueError
    when the run did not process every image.
    """
    runs = []
    for images in sizes:
        run_dir = ctx.run_dir(f"{label}-{images}")
        command = make_command(ctx.folders[images], run_dir)
        measured = run_measured(command, os.path.join(run_dir, "log"), ctx.env, ctx.timeout_secs(images))
        details = check_output(run_dir, images)
        runs.append({"images": images, **_run_numbers(measured), **details})
    return steady_state(runs)


def _run_numbers(measured):
    numbers = {key: measured[key] for key in ("wall_secs", "cpu_secs", "peak_rss_mib")}
    numbers["log"] = measured["stderr"]
    return numbers


# (a) and (f): the ceiling.


def run_ceiling(ctx, precision):
    """Times both extractors on pre-decoded batches of the largest image set, in a child process."""
    images = ctx.sizes[-1]
    run_dir = ctx.run_dir(f"ceiling-{precision}")
    json_out = os.path.join(run_dir, "result.json")
    command = [
        ctx.python,
        os.path.join(BENCH_DIR, "ceiling.py"),
        f"--images={ctx.folders[images]}",
        f"--hub_model={ctx.hub_model}",
        f"--keras_weights={ctx.keras_weights}",
        f"--batch_size={ctx.batch_size}",
        f"--precision={precision}",
        f"--json_out={json_out}",
        f"--features_out={os.path.join(run_dir, 'features.npz')}",
    ]
    measured = run_measured(command, os.path.join(run_dir, "log"), ctx.env, ctx.timeout_secs(images))
    with open(json_out, encoding="utf-8") as handle:
        result = json.load(handle)
    result.update(images=images, batch_size=ctx.batch_size, peak_rss_mib=measured["peak_rss_mib"])
    result["features"] = os.path.join(run_dir, "features.npz")
    return result


def measure_ceiling(ctx):
    return {FLOAT32: run_ceiling(ctx, FLOAT32)}


# (b): the plain script.


def measure_plain(ctx):
    def command(folder, run_dir):
        return [
            ctx.python,
            os.path.join(BENCH_DIR, "plain_script.py"),
            f"--input={folder}",
            f"--output={os.path.join(run_dir, 'features.parquet')}",
            f"--hub_model={ctx.hub_model}",
            f"--keras_weights={ctx.keras_weights}",
            f"--batch_size={ctx.batch_size}",
        ]

    def check(run_dir, images):
        rows = pq.read_metadata(os.path.join(run_dir, "features.parquet")).num_rows
        return _check_rows("plain script", rows, images)

    result = measure_sizes(ctx, "plain", ctx.sizes, command, check)
    result["keras_call"] = "model.predict(x, verbose=0)"
    return result


def _check_rows(what, rows, images):
    if rows != images:
        raise ValueError(f"{what} wrote {rows} rows for {images} images")
    return {"rows": rows}


# (c): stock RunInference.


def measure_stock(ctx):
    """Probes whether the stock handler loads the hub model, then times what can run."""
    run_dir = ctx.run_dir("stock-probe")
    probe_path = os.path.join(run_dir, "probe.json")
    script = os.path.join(BENCH_DIR, "stock_runinference.py")
    probe_command = [ctx.python, script, f"--hub_model={ctx.hub_model}", f"--probe_hub={probe_path}"]
    run_measured(probe_command, os.path.join(run_dir, "log"), ctx.env, ctx.timeout_secs(0))
    with open(probe_path, encoding="utf-8") as handle:
        probe = json.load(handle)
    models = "both" if probe["loads"] else "keras"

    def command(folder, run_dir):
        return [
            ctx.python,
            script,
            f"--input={folder}",
            f"--output={os.path.join(run_dir, 'features')}",
            f"--hub_model={ctx.hub_model}",
            f"--keras_weights={ctx.keras_weights}",
            f"--models={models}",
            f"--batch_size={ctx.batch_size}",
            "--runner=FnApiRunner",
        ]

    def check(run_dir, images):
        files = glob.glob(os.path.join(run_dir, "features*.parquet"))
        rows = sum(pq.read_metadata(path).num_rows for path in files)
        return _check_rows("stock RunInference", rows, images)

    result = measure_sizes(ctx, f"stock-{models}", ctx.sizes, command, check)
    hub_status = "loads" if probe["loads"] else f"cannot load: {probe['reason']}"
    label = "hub + Keras" if probe["loads"] else "Keras only: the hub model cannot load"
    result.update(models=models, label=label, hub_model=hub_status, keras_model="loads")
    return result


# (d), (e) and (f): the pipeline through its CLI.


def pipeline_command(ctx, extra=()):
    def command(folder, run_dir):
        return [
            ctx.cli,
            "run",
            f"--input={folder}",
            f"--output={os.path.join(run_dir, 'output')}",
            "--models=fixture",
            f"--batch_size={ctx.batch_size}",
            "--runner=FnApiRunner",
            *extra,
        ]

    return command


def check_pipeline_run(run_dir, images):
    """Reads the run's manifest and log; returns its counts and the start-up steps' times."""
    manifests = glob.glob(os.path.join(run_dir, "output", "runs", "*.json"))
    if len(manifests) != 1:
        raise ValueError(f"expected one manifest under {run_dir}/output/runs, found {len(manifests)}")
    with open(manifests[0], encoding="utf-8") as handle:
        manifest = json.load(handle)
    counts = manifest.get("counts", {})
    if counts.get("features") != images or counts.get("errors"):
        raise ValueError(
            f"pipeline wrote {counts['features']} feature rows and {counts['errors']} error rows "
            f"for {images} images"
        )

    with open(os.path.join(run_dir, "log.err"), encoding="utf-8", errors="replace") as handle:
        log = handle.read()
    return {
        "rows": counts["features"],
        "pipeline_secs": manifest.get("timings", {}).get("pipeline_secs"),
        "preflight_secs": [float(value) for value in _PREFLIGHT_LOG.findall(log)],
        "worker_load_secs": [float(value) for value in _WORKER_LOAD_LOG.findall(log)],
    }


def measure_pipeline(ctx):
    single = measure_sizes(ctx, "pipeline-single", ctx.sizes, pipeline_command(ctx), check_pipeline_run)
    multi = measure_sizes(
        ctx, "pipeline-multi", ctx.sizes, pipeline_command(ctx, MULTI_PROCESS_FLAGS), check_pipeline_run
    )
    return {"single_process": single, "multi_process": multi}


def measure_memory(ctx):
    fit = measure_sizes(ctx, "memory", ctx.memory_sizes, pipeline_command(ctx), check_pipeline_run)
    small, large = fit["runs"][0], fit["runs"][-1]
    fit["peak_rss_ratio"] = large["peak_rss_mib"] / small["peak_rss_mib"]
    return fit


# (f): bfloat16 against float32.


def cli_supports_precision(ctx):
    """Returns True when `inception-parity run --help` lists --precision."""
    completed = subprocess.run(
        [ctx.cli, "run", "--help"], capture_output=True, text=True, env=ctx.env, timeout=ctx.timeout_secs(0)
    )
    return "--precision" in completed.stdout


def feature_cosines(float32_path, bfloat16_path):
    """Returns the median and minimum per-image cosine of bfloat16 against float32, per model."""
    reference, candidate = np.load(float32_path), np.load(bfloat16_path)
    stats = {}
    for model in ("hub", "keras"):
        a = reference[model].astype(np.float64)
        b = candidate[model].astype(np.float64)
        cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        stats[model] = {"median": float(np.median(cosine)), "min": float(np.min(cosine))}
    return stats


def measure_bfloat16(ctx, float32_ceiling):
    """Ceiling and pipeline throughput in bfloat16; float32_ceiling is measure_ceiling's result or None."""
    result = {"ceiling": run_ceiling(ctx, BFLOAT16)}
    ceiling = result["ceiling"]
    if ceiling.get("available") and float32_ceiling:
        reference = float32_ceiling[FLOAT32]
        result["ceiling_speed_ratio"] = ceiling["images_per_sec"] / reference["images_per_sec"]
        result["cosine_vs_float32"] = feature_cosines(reference["features"], ceiling["features"])

    if cli_supports_precision(ctx):
        command = pipeline_command(ctx, ("--precision=bfloat16",))
        result["pipeline_single_process"] = measure_sizes(
            ctx, "pipeline-bfloat16", ctx.sizes, command, check_pipeline_run
        )
    else:
        result["pipeline_single_process"] = {
            "available": False,
            "reason": "`inception-parity run --help` lists no --precision flag",
        }
    return result
