"""Benchmark of `inception-parity run` against its ceiling and the alternatives a user has.

One run measures, on the same seeded crops of real photos:
  a  ceiling: both extractors' forward passes on pre-decoded batches
  b  plain: a plain Pillow + TF Hub + Keras script (plain_script.py)
  c  stock: two chained stock Beam RunInference transforms (stock_runinference.py)
  d  pipeline: the CLI end to end, single process and 2 worker processes
  e  memory: peak RSS of the single-process pipeline at two folder sizes
  f  bfloat16: ceiling and pipeline in bfloat16, where the project supports it
and writes benchmark.json and benchmark.md to --out. See benchmarks/README.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata

import bench_parts
import psutil
from bench_images import load_photos, write_image_set
from bench_process import CommandFailedError
from bench_report import evaluate_checks, write_json, write_markdown

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PHOTOS = os.path.join(os.path.dirname(REPO_ROOT), "shared", "images", "photos")
DEFAULT_WORK = os.path.join("/tmp", "inception-parity-bench")
PARTS = ("ceiling", "plain", "stock", "pipeline", "memory", "bfloat16")
PART_LETTERS = dict(zip("abcdef", PARTS, strict=True))
# CPU flags that decide how fast float32 and bfloat16 convolutions can run.
NOTABLE_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
VERSIONED_PACKAGES = ("tensorflow", "keras", "apache-beam", "tensorflow-hub", "numpy", "pyarrow", "pillow")


def parse_parts(text):
    """Parses a comma-separated list of part names or letters a-f into part names."""
    parts = set()
    for item in filter(None, (item.strip().lower() for item in text.split(","))):
        name = PART_LETTERS.get(item, item)
        if name not in PARTS:
            raise argparse.ArgumentTypeError(f"unknown part {item!r}; parts are {', '.join(PARTS)} or a-f")
        parts.add(name)
    return parts


def parse_sizes(text):
    sizes = tuple(int(item) for item in text.split(","))
    if len(sizes) != 2 or not 0 < sizes[0] < sizes[1]:
        raise argparse.ArgumentTypeError(
            f"expected two image counts SMALL,LARGE with SMALL < LARGE, received {text!r}"
        )
    return sizes


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images",
        type=int,
        default=256,
        help="Images of the throughput runs; whole commands also run on a quarter of them (default: 256).",
    )
    parser.add_argument(
        "--memory_sizes",
        type=parse_sizes,
        default=(200, 2000),
        help="SMALL,LARGE image counts of part e (default: 200,2000).",
    )
    parser.add_argument(
        "--batch_size", type=int, default=32, help="Images per batch in every part (default: 32)."
    )
    parser.add_argument(
        "--skip", type=parse_parts, default=set(), help=f"Parts to skip: {', '.join(PARTS)} or a-f."
    )

    # Where the inputs come from and where the results go.
    parser.add_argument(
        "--out",
        default=os.path.join(REPO_ROOT, "benchmarks", "results"),
        help="Folder for benchmark.json and benchmark.md (default: benchmarks/results).",
    )
    parser.add_argument(
        "--work", default=DEFAULT_WORK, help="Folder for images, outputs and logs (default: %(default)s)."
    )
    parser.add_argument("--photos", default=DEFAULT_PHOTOS, help="Folder of photos the crops are cut from.")
    parser.add_argument("--seed", type=int, default=2024, help="Seed of the crops (default: %(default)s).")

    args = parser.parse_args(argv)
    # The ceiling leaves its first batch out, so it needs a second one; the small run needs N / 4 >= 1.
    if args.batch_size <= 0:
        parser.error(f"--batch_size must be positive, received {args.batch_size}")
    if args.images <= args.batch_size or args.images < 4:
        parser.error(
            f"--images must exceed --batch_size ({args.batch_size}) and be at least 4, received {args.images}"
        )
    return args


def machine_description():
    """Returns the CPU model, CPU count, memory, notable CPU flags and library versions."""
    cpu_model, flags = "unknown", set()
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu_model == "unknown":
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model,
        "cpus": len(os.sched_getaffinity(0)),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "cpu_flags": [flag for flag in NOTABLE_CPU_FLAGS if flag in flags],
        "python": sys.version.split()[0],
        "versions": {name: metadata.version(name) for name in VERSIONED_PACKAGES},
        "load_before": _load_average(),
    }


def _load_average():
    return [round(value, 2) for value in os.getloadavg()]


def child_environment():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # Beam's multi-process mode talks gRPC to localhost; a proxy in the environment would
    # catch that traffic and hang the workers.
    env["no_proxy"] = env["NO_PROXY"] = "localhost,127.0.0.1"
    return env


def fixture_paths(python, env):
    """Builds the fixture pair if needed, in a child process; returns (hub folder, Keras weights)."""
    code = (
        "import json; from transforms.fixture import ensure_fixture_pair; "
        "p = ensure_fixture_pair(); print(json.dumps([p.hub_model, p.keras_weights]))"
    )
    completed = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        sys.exit(f"error: building or finding the fixture pair failed:\n{completed.stderr[-4000:]}")
    hub_model, keras_weights = json.loads(completed.stdout.strip().splitlines()[-1])
    return hub_model, keras_weights


def prepare_images(args):
    """Writes every image set the parts need; returns {image count: folder}."""
    photos = load_photos(args.photos)
    small = args.images // 4
    counts = {small, args.images}
    if "memory" not in args.skip:
        counts.update(args.memory_sizes)
    return {
        count: write_image_set(
            photos, os.path.join(args.work, "images", f"seed{args.seed}-{count}"), count, args.seed
        )
        for count in sorted(counts)
    }


def build_context(args):
    env = child_environment()
    python = sys.executable
    cli = os.path.join(os.path.dirname(python), "inception-parity")
    if not os.path.exists(cli):
        sys.exit(f"error: {cli} not found; run this script with the project's virtualenv Python")
    hub_model, keras_weights = fixture_paths(python, env)
    return bench_parts.BenchContext(
        work=args.work,
        python=python,
        cli=cli,
        hub_model=hub_model,
        keras_weights=keras_weights,
        batch_size=args.batch_size,
        folders=prepare_images(args),
        sizes=(args.images // 4, args.images),
        memory_sizes=args.memory_sizes,
        env=env,
    )


def run_part(name, measure):
    """Runs one part; a failure is recorded in its result instead of ending the benchmark."""
    print(f"[{name}] started at {datetime.now().strftime('%H:%M:%S')}, load {_load_average()}", flush=True)
    started = time.perf_counter()
    try:
        result = measure()
    except (CommandFailedError, subprocess.SubprocessError, ValueError, OSError, KeyError) as err:
        traceback.print_exc()
        result = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
    result["part_secs"] = time.perf_counter() - started
    print(f"[{name}] {summarize_part(name, result)} ({result['part_secs']:.0f} s)", flush=True)
    return result


def summarize_part(name, result):
    """Returns the progress line's summary of one part's result."""
    if "error" in result:
        return f"FAILED: {result['error']}"
    if name == "ceiling":
        return f"{result['float32']['images_per_sec']:.2f} images/s"
    if name == "pipeline":
        single, multi = result["single_process"], result["multi_process"]
        return f"single {_fit_text(single)}; 2 processes {_fit_text(multi)}"
    if name == "memory":
        peaks = " -> ".join(f"{run['peak_rss_mib']:.0f} MiB" for run in result["runs"])
        return f"peak RSS {peaks}, ratio {result['peak_rss_ratio']:.2f}"
    if name == "bfloat16":
        ceiling = result["ceiling"]
        ceiling_text = (
            f"{ceiling['images_per_sec']:.2f} images/s" if ceiling.get("available") else ceiling["reason"]
        )
        pipeline = result["pipeline_single_process"]
        pipeline_text = _fit_text(pipeline) if "runs" in pipeline else pipeline["reason"]
        return f"ceiling {ceiling_text}; pipeline {pipeline_text}"
    return _fit_text(result)


def _fit_text(fit):
    steady, startup = fit["steady_images_per_sec"], fit["startup_secs"]
    if steady is None:
        return fit.get("note", "no steady state")
    return f"steady {steady:.2f} images/s, start-up {startup:.1f} s"


def run_parts(ctx, skip):
    parts = {}
    measures = {
        "ceiling": lambda: bench_parts.measure_ceiling(ctx),
        "plain": lambda: bench_parts.measure_plain(ctx),
        "stock": lambda: bench_parts.measure_stock(ctx),
        "pipeline": lambda: bench_parts.measure_pipeline(ctx),
        "memory": lambda: bench_parts.measure_memory(ctx),
        "bfloat16": lambda: bench_parts.measure_bfloat16(ctx, _without_error(parts.get("ceiling"))),
    }
    for name in PARTS:
        if name not in skip:
            parts[name] = run_part(name, measures[name])
    return parts


def _without_error(result):
    return None if result is None or "error" in result else result


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    machine = machine_description()
    ctx = build_context(args)
    memory_text = "" if "memory" in args.skip else f", memory sizes {ctx.memory_sizes}"
    print(f"images in {args.work}/images: sizes {ctx.sizes}{memory_text}", flush=True)
    uneven = [size for size in ctx.sizes if size % args.batch_size]
    if uneven:
        # A short final batch costs about as much as a full one, which skews the steady-state fit.
        print(
            f"warning: image counts {uneven} are not multiples of --batch_size {args.batch_size}", flush=True
        )

    parts = run_parts(ctx, args.skip)
    machine["load_after"] = _load_average()
    config = {
        "sizes": list(ctx.sizes),
        "memory_sizes": list(ctx.memory_sizes),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "work": args.work,
        "skipped": sorted(args.skip),
    }
    results = {"machine": machine, "config": config, "parts": parts, "checks": evaluate_checks(parts)}
    print(f"wrote {write_json(results, args.out)} and {write_markdown(results, args.out)}")
    for check in results["checks"]:
        value = "n/a" if check["value"] is None else f"{check['value']:.3f}"
        print(f"  {check['check']}: {value} (target {check['target']}) {check['result']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
