"""The benchmark's checks against the speed targets, and its JSON and Markdown reports."""

import json
import os

# (name, numerator path, denominator path, comparison, target); paths index results["parts"].
CHECKS = (
    (
        "pipeline single-process steady / ceiling",
        ("pipeline", "single_process", "steady_images_per_sec"),
        ("ceiling", "float32", "images_per_sec"),
        ">=",
        0.90,
    ),
    (
        "pipeline single-process steady / plain script steady",
        ("pipeline", "single_process", "steady_images_per_sec"),
        ("plain", "steady_images_per_sec"),
        ">=",
        1.0,
    ),
    (
        "bfloat16 / float32, ceiling",
        ("bfloat16", "ceiling", "images_per_sec"),
        ("ceiling", "float32", "images_per_sec"),
        ">=",
        1.8,
    ),
    (
        "bfloat16 / float32, pipeline single-process steady",
        ("bfloat16", "pipeline_single_process", "steady_images_per_sec"),
        ("pipeline", "single_process", "steady_images_per_sec"),
        ">=",
        1.8,
    ),
    (
        "peak memory, larger / smaller folder",
        ("memory", "runs", -1, "peak_rss_mib"),
        ("memory", "runs", 0, "peak_rss_mib"),
        "<=",
        1.2,
    ),
)


def lookup(tree, path):
    """Follows path through nested dicts and lists; returns None where a step is missing."""
    node = tree
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def evaluate_checks(parts):
    """Returns one dict per check: value, target and PASS, FAIL or n/a."""
    checks = []
    for name, numerator_path, denominator_path, comparison, target in CHECKS:
        numerator, denominator = lookup(parts, numerator_path), lookup(parts, denominator_path)
        check = {"check": name, "target": f"{comparison} {target}", "value": None, "result": "n/a"}
        if isinstance(numerator, (int, float)) and isinstance(denominator, (int, float)) and denominator > 0:
            value = numerator / denominator
            passed = value >= target if comparison == ">=" else value <= target
            check.update(value=value, result="PASS" if passed else "FAIL")
        checks.append(check)
    return checks


def write_json(results, folder):
    path = os.path.join(folder, "benchmark.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
    return path


def _number(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fit_cells(fit):
    """Returns the (images/s, start-up s, CPU s/image, peak MiB, notes) cells of a two-size fit."""
    if fit is None:
        return "n/a", "n/a", "n/a", "n/a", "skipped"
    if "error" in fit or fit.get("available") is False:
        return "n/a", "n/a", "n/a", "n/a", fit.get("error") or fit.get("reason", "")
    runs = fit["runs"]
    walls = ", ".join(f"{run['images']} images: {run['wall_secs']:.1f} s" for run in runs)
    peak = max(run["peak_rss_mib"] for run in runs)
    note = f"{walls}; {fit['note']}" if fit.get("note") else walls
    return (
        _number(fit["steady_images_per_sec"], 2),
        _number(fit["startup_secs"]),
        _number(fit.get("steady_cpu_secs_per_image"), 3),
        f"{peak:.0f}",
        note,
    )


def _ceiling_row(label, result):
    if result is None:
        return f"| {label} | n/a | | | | skipped |"
    if "error" in result or not result.get("available", True):
        return f"| {label} | n/a | | | | {result.get('error') or result.get('reason')} |"
    note = (
        f"hub {result['hub_images_per_sec']:.2f}/s, Keras {result['keras_images_per_sec']:.2f}/s alone; "
        f"{result['timed_images']} images timed, first batch ({result['first_batch_secs']:.1f} s) left out"
    )
    cpu = _number(result.get("cpu_secs_per_image"), 3)
    return f"| {label} | {result['images_per_sec']:.2f} | | {cpu} | {result['peak_rss_mib']:.0f} | {note} |"


def _fit_row(label, fit):
    return "| " + " | ".join((label, *_fit_cells(fit))) + " |"


def sub_result(parts, part, key):
    """Returns parts[part][key]; a failed part's error dict, or None when the part was skipped."""
    result = parts.get(part)
    if not result:
        return None
    if "error" in result:
        return result
    return result.get(key)


def part_rows(parts):
    """Returns the Markdown rows of the throughput table, one per measured configuration."""
    stock = parts.get("stock")
    stock_label = "(c) stock RunInference"
    if stock and "label" in stock:
        stock_label += f", {stock['label']}"
    return [
        _ceiling_row(
            "(a) ceiling float32: both extractors, pre-decoded", sub_result(parts, "ceiling", "float32")
        ),
        _fit_row("(b) plain script (Pillow + hub.load + model.predict)", parts.get("plain")),
        _fit_row(stock_label, stock),
        _fit_row("(d) pipeline, single process", sub_result(parts, "pipeline", "single_process")),
        _fit_row("(d) pipeline, 2 worker processes", sub_result(parts, "pipeline", "multi_process")),
        _fit_row("(e) pipeline, single process, memory folder sizes", parts.get("memory")),
        _ceiling_row("(f) ceiling bfloat16", sub_result(parts, "bfloat16", "ceiling")),
        _fit_row(
            "(f) pipeline bfloat16, single process", sub_result(parts, "bfloat16", "pipeline_single_process")
        ),
    ]


def check_rows(checks):
    rows = ["| check | value | target | result |", "|---|---|---|---|"]
    rows += [f"| {c['check']} | {_number(c['value'], 3)} | {c['target']} | {c['result']} |" for c in checks]
    return rows


def detail_lines(parts):
    """Returns Markdown bullet lines for facts that do not fit the tables."""
    lines = []
    stock = parts.get("stock") or {}
    if "hub_model" in stock:
        lines.append(f"- Stock TFModelHandlerNumpy and the hub SavedModel: {stock['hub_model']}")
    cosine = (parts.get("bfloat16") or {}).get("cosine_vs_float32")
    if cosine:
        for model, stats in cosine.items():
            lines.append(
                f"- Cosine of bfloat16 to float32 features, {model}: median {stats['median']:.6f}, "
                f"worst {stats['min']:.6f}"
            )
    memory = parts.get("memory") or {}
    if memory.get("runs"):
        peaks = ", ".join(f"{run['images']} images: {run['peak_rss_mib']:.0f} MiB" for run in memory["runs"])
        lines.append(f"- Peak RSS of the process tree, single process: {peaks}")
    lines += cpu_lines(parts)
    lines += pipeline_run_lines(parts)
    for name, part in parts.items():
        if isinstance(part, dict) and "error" in part:
            lines.append(f"- Part {name} failed: {part['error']}")
    return lines


def cpu_lines(parts):
    """Returns a Markdown line comparing CPU seconds per image, when the ceiling has them.

    Other processes on the same cores usually slow wall time more than they raise CPU
    time, so on a busy machine this comparison is the steadier one.
    """
    ceiling = lookup(parts, ("ceiling", "float32", "cpu_secs_per_image"))
    if not ceiling:
        return []
    others = {
        "plain script": lookup(parts, ("plain", "steady_cpu_secs_per_image")),
        "pipeline single process": lookup(parts, ("pipeline", "single_process", "steady_cpu_secs_per_image")),
        "pipeline 2 processes": lookup(parts, ("pipeline", "multi_process", "steady_cpu_secs_per_image")),
    }
    ratios = [f"{name} {value / ceiling:.2f}" for name, value in others.items() if value]
    if not ratios:
        return []
    return [f"- CPU seconds per image relative to the float32 ceiling ({ceiling:.3f} s): {', '.join(ratios)}"]


def pipeline_run_lines(parts):
    """Returns one Markdown line per pipeline run: where its wall time went."""
    fits = {
        "single process": lookup(parts, ("pipeline", "single_process")),
        "2 worker processes": lookup(parts, ("pipeline", "multi_process")),
        "memory": parts.get("memory"),
        "bfloat16": lookup(parts, ("bfloat16", "pipeline_single_process")),
    }
    lines = []
    for label, fit in fits.items():
        for run in (fit or {}).get("runs", []):
            if run.get("pipeline_secs") is None:
                continue
            lines.append(
                f"- Pipeline {label}, {run['images']} images: wall {run['wall_secs']:.1f} s, of which "
                f"Beam pipeline {run['pipeline_secs']:.1f} s; launcher model check "
                f"{_seconds_list(run.get('preflight_secs'))}, worker model loads "
                f"{_seconds_list(run.get('worker_load_secs'))}"
            )
    return lines


def _seconds_list(values):
    return " + ".join(f"{value:.1f} s" for value in values) if values else "not logged"


def write_markdown(results, folder):
    machine = results["machine"]
    config = results["config"]
    lines = [
        "# inception-parity benchmark",
        "",
        f"{machine['date']}: {machine['cpu_model']}, {machine['cpus']} CPUs, "
        f"{machine['memory_gib']:.1f} GiB; TensorFlow {machine['versions']['tensorflow']}, "
        f"Keras {machine['versions']['keras']}, Apache Beam {machine['versions']['apache-beam']}. "
        f"CPU flags: {', '.join(machine['cpu_flags']) or 'none of note'}. "
        f"Load average before / after: {machine['load_before']} / {machine['load_after']}.",
        "",
        f"Images: {config['sizes']} (throughput), {config['memory_sizes']} (memory); "
        f"batch size {config['batch_size']}.",
        "",
        "| configuration | images/s | start-up s | CPU s/image | peak RSS MiB | notes |",
        "|---|---|---|---|---|---|",
        *part_rows(results["parts"]),
        "",
        *check_rows(results["checks"]),
        "",
        *detail_lines(results["parts"]),
        "",
    ]
    path = os.path.join(folder, "benchmark.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    return path
