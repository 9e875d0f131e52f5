"""Data-prep throughput and memory against a read-and-parse baseline, on synthetic raw JSONL.

    python benchmarks/dataprep.py [--records 1000000] [--workers N] [--workdir DIR] [--keep] [--no-fail]

The input (about 1 KB a record) is generated once with `benchmarks/synthetic.py` and reused while
its size matches. Each measurement runs in a fresh child process, so its peak RSS
(`ru_maxrss`) is its own:

  baseline     read the JSONL through ObjectStoragePath and `json.loads` every line, nothing else
  no-near      `Curator` with PrepConfig(near_dedup=False, workers=N)
  full         `Curator` with PrepConfig(workers=N) (near-duplicate detection on)
  full-1/4     the same on the first quarter of the records, for the memory-growth check

N (--workers) defaults to min(2, CPUs), as the DAG runs it. With workers the per-record stages
run in worker processes: their seconds are summed over the workers, so their records/s is per
worker, and the total wall time is what to compare with the baseline.

Per stage: seconds, records/s (records entering the stage / its seconds) and the ratio to the
baseline's records/s; in total: records read / wall seconds of the run. Targets (issue):

  * pipeline without near-dedup >= 0.2 x baseline records/s
  * near-dedup stage >= 10,000 records/s
  * peak RSS of every run < 2 GiB
  * memory does not grow with the input beyond the dedup index: between full-1/4 and full, the
    growth of (peak RSS - RSS after imports - estimated peak index size) stays under
    max(64 MiB, 10% of the full run's peak)

Exits 1 when a target fails, unless --no-fail. Outputs are written under the work directory and
removed after each run unless --keep. CPU seconds (worker processes included) are printed next to
wall seconds: a CPU/wall ratio well under 1 (under the number of processes busy, with workers)
means other processes competed for the CPU and the timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGES = ("read", "normalize", "clean", "pii", "exact_dedup", "near_dedup", "split_write")
GiB = 1024**3
MiB = 1024**2
MIN_RATIO = 0.2
MIN_NEAR_RATE = 10_000
MAX_RSS = 2 * GiB


# --- child side: one measurement per process --------------------------------------------------

def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its ended children (the pipeline's worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _set_bytes(items: set, sample: int = 2000) -> tuple[int, int]:
    """(bytes now, bytes at the worst resize) of a set of ints: table plus sampled element sizes.

    Element sizes are rounded up to pymalloc's 8-byte alignment. While a set resizes, its old
    table (at most half the new one) is still allocated, hence the peak estimate of 1.5 tables.
    """
    table = sys.getsizeof(items)
    if not items:
        return table, table
    picked = random.Random(0).sample(list(items), min(sample, len(items)))
    per_item = sum((sys.getsizeof(x) + 7) // 8 * 8 for x in picked) / len(picked)
    elements = int(per_item * len(items))
    return elements + table, elements + table * 3 // 2


def _warm_up(uri: str) -> None:
    """Pay Airflow's one-off cost of the first file operation (lineage collector setup, about a
    second) before any clock starts, so that it burdens neither the baseline nor the pipeline."""
    from include.storage.objectstore import storage_path

    with storage_path(uri).open("rb") as f:
        f.read(1)


def _child_baseline(spec: dict) -> dict:
    from include.storage.objectstore import storage_path

    path = storage_path(spec["input"])
    _warm_up(spec["input"])
    rss_ready = _peak_rss()
    loads = json.loads
    records = parsed = 0
    wall, cpu = time.perf_counter(), time.process_time()
    with path.open("rb") as f:
        for line in f:
            records += 1
            try:
                loads(line)
                parsed += 1
            except ValueError:  # malformed JSON and invalid UTF-8 lines, as in the synthetic input
                pass
    return {"records": records, "parsed": parsed, "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu, "rss_ready": rss_ready, "rss_peak": _peak_rss()}


def _child_pipeline(spec: dict) -> dict:
    """`curate` without its wrapper, so the dedup indexes can be sized afterwards."""
    from include.data.pipeline import Curator, PrepConfig
    from include.data.sources import list_files
    from include.storage.objectstore import storage_path

    config = PrepConfig(near_dedup=spec["near_dedup"], workers=spec["workers"])
    paths = list_files(storage_path(spec["input"]))
    curator = Curator(config, storage_path(spec["output"]))
    _warm_up(spec["input"])
    rss_ready = _peak_rss()
    wall, cpu = time.perf_counter(), _cpu_with_children()
    manifest = curator.run([spec["input"]], paths)
    wall, cpu = time.perf_counter() - wall, _cpu_with_children() - cpu
    exact_now, exact_peak = _set_bytes(curator.exact._seen)
    near_now, near_peak = _set_bytes(curator.near._seen) if curator.near else (0, 0)
    return {"records": manifest["counts"]["read"], "wall": wall, "cpu": cpu, "rss_ready": rss_ready,
            "rss_peak": _peak_rss(), "seconds": dict(curator.seconds), "counts": manifest["counts"],
            "index": {"exact_entries": len(curator.exact._seen),
                      "near_entries": len(curator.near._seen) if curator.near else 0,
                      "bytes": exact_now + near_now, "peak_bytes": exact_peak + near_peak}}


def child_main(spec: dict) -> None:
    run = _child_baseline if spec["kind"] == "baseline" else _child_pipeline
    print(json.dumps(run(spec)))


# --- parent side -------------------------------------------------------------------------------

def ensure_input(workdir: Path, records: int, seed: int = 0) -> Path:
    """The synthetic input for `records`, generated unless a complete one of that size is there."""
    path = workdir / f"raw-{records}-seed{seed}.jsonl"
    meta = path.with_suffix(".meta.json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("records") == records and info.get("bytes") == path.stat().st_size:
            return path
    workdir.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "benchmarks.synthetic", "--records", str(records),
                    "--out", str(path), "--seed", str(seed)], cwd=ROOT, check=True)
    meta.write_text(json.dumps({"records": records, "seed": seed, "bytes": path.stat().st_size}))
    return path


def measure(label: str, spec: dict) -> dict:
    """Run one measurement in a fresh interpreter and return what it reported."""
    print(f"  {label} ...", end="", flush=True, file=sys.stderr)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{label}: child exited with {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f" {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return result


def entering(stage: str, counts: dict) -> int:
    """Records that entered `stage`, from the manifest counts."""
    return {
        "read": counts.get("read", 0),
        "normalize": counts.get("read", 0),
        "clean": counts.get("normalized", 0),
        "pii": counts.get("cleaned", 0),
        "exact_dedup": counts.get("cleaned", 0),
        "near_dedup": counts.get("cleaned", 0) - counts.get("exact_duplicates", 0),
        "split_write": counts.get("written", 0),
    }[stage]


def rate(records: int, seconds: float) -> float:
    return records / seconds if seconds > 0 else float("inf")


def report(runs: dict[str, dict], records: int, input_bytes: int) -> list[tuple[str, bool, str]]:
    """Print the table; return (target, passed, detail) for each target."""
    base = runs["baseline"]
    base_rate = rate(base["records"], base["wall"])
    pipes = [name for name in ("no-near", "full") if name in runs]
    print(f"\nInput: {records:,} records, {input_bytes / 1e6:,.0f} MB. "
          f"Baseline (read + json.loads): {base['wall']:.2f}s wall, {base['cpu']:.2f}s CPU, "
          f"{base_rate:,.0f} records/s.\n")
    head = f"{'stage':<12}" + "".join(f"{name + ' s':>12}{'records/s':>12}{'x base':>9}" for name in pipes)
    print(head)
    print("-" * len(head))
    for stage in STAGES:
        row = f"{stage:<12}"
        for name in pipes:
            secs = runs[name]["seconds"].get(stage)
            if secs is None:
                row += f"{'-':>12}{'-':>12}{'-':>9}"
                continue
            r = rate(entering(stage, runs[name]["counts"]), secs)
            row += f"{secs:>12.2f}{r:>12,.0f}{r / base_rate:>9.3f}"
        print(row)
    print("-" * len(head))
    rows = {
        "stage sum": lambda run: sum(run["seconds"].values()),
        "total wall": lambda run: run["wall"],
    }
    for label, secs_of in rows.items():
        row = f"{label:<12}"
        for name in pipes:
            secs = secs_of(runs[name])
            r = rate(runs[name]["records"], secs)
            row += f"{secs:>12.2f}{r:>12,.0f}{r / base_rate:>9.3f}"
        print(row)
    print(f"{'total CPU':<12}" + "".join(f"{runs[n]['cpu']:>12.2f}{'':>12}{'':>9}" for n in pipes))
    print(f"{'CPU / wall':<12}" + "".join(f"{runs[n]['cpu'] / runs[n]['wall']:>12.2f}{'':>12}{'':>9}"
                                        for n in pipes))

    print(f"\n{'run':<10}{'records':>11}{'wall s':>9}{'CPU s':>9}{'records/s':>11}{'RSS ready':>11}"
          f"{'peak RSS':>10}{'index est.':>12}{'index peak':>12}  (MiB)")
    for name, run in runs.items():
        index = run.get("index", {})
        print(f"{name:<10}{run['records']:>11,}{run['wall']:>9.1f}{run['cpu']:>9.1f}"
              f"{rate(run['records'], run['wall']):>11,.0f}{run['rss_ready'] / MiB:>11.0f}"
              f"{run['rss_peak'] / MiB:>10.0f}{index.get('bytes', 0) / MiB:>12.0f}"
              f"{index.get('peak_bytes', 0) / MiB:>12.0f}")
    for name, run in runs.items():
        if "index" in run:
            i = run["index"]
            print(f"  {name}: {i['exact_entries']:,} exact keys, {i['near_entries']:,} LSH band keys; "
                  f"counts {json.dumps(run['counts'], separators=(',', ':'))}")

    results = []
    if "no-near" in runs:
        ratio = rate(runs["no-near"]["records"], runs["no-near"]["wall"]) / base_rate
        results.append((f"pipeline without near-dedup >= {MIN_RATIO} x baseline", ratio >= MIN_RATIO,
                        f"{ratio:.3f} x"))
    if "full" in runs:
        full = runs["full"]
        near = rate(entering("near_dedup", full["counts"]), full["seconds"].get("near_dedup", 0.0))
        results.append((f"near-dedup >= {MIN_NEAR_RATE:,} records/s", near >= MIN_NEAR_RATE, f"{near:,.0f} records/s"))
    peak = max(run["rss_peak"] for run in runs.values())
    results.append(("peak RSS < 2 GiB", peak < MAX_RSS, f"{peak / MiB:,.0f} MiB (max over runs)"))
    if "full" in runs and "full-1/4" in runs:
        small, large = runs["full-1/4"], runs["full"]

        def growth_beyond(key: str) -> float:
            def beyond(run: dict) -> float:
                return run["rss_peak"] - run["rss_ready"] - run["index"][key]
            return beyond(large) - beyond(small)

        growth = growth_beyond("peak_bytes")
        allowed = max(64 * MiB, 0.1 * large["rss_peak"])
        results.append(("memory grows only with the dedup index", growth <= allowed,
                        f"peak RSS {small['rss_peak'] / MiB:,.0f} -> {large['rss_peak'] / MiB:,.0f} MiB for "
                        f"{large['records'] / small['records']:.1f}x records, index peak est. "
                        f"{small['index']['peak_bytes'] / MiB:,.0f} -> {large['index']['peak_bytes'] / MiB:,.0f} MiB; "
                        f"growth beyond the index {growth / MiB:+,.0f} MiB "
                        f"({growth_beyond('bytes') / MiB:+,.0f} MiB without resize slack; "
                        f"allowed {allowed / MiB:,.0f})"))
    print()
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    busy = [f"{name} {run['cpu'] / run['wall']:.2f}" for name, run in runs.items() if run["cpu"] < 0.9 * run["wall"]]
    if busy:
        print(f"NOTE  CPU / wall under 0.9 ({', '.join(busy)}): other processes took CPU time, "
              "so the wall-clock rates above are pessimistic and noisy.")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="synthetic records (default 1,000,000)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".data" / "bench",
                        help="where the input is cached and outputs are written (default .data/bench)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="PrepConfig.workers for the pipeline runs (default min(2, CPUs))")
    parser.add_argument("--keep", action="store_true", help="keep the curated outputs")
    parser.add_argument("--no-fail", action="store_true", help="report only; exit 0 even if a target fails")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    if args.records < 4:
        parser.error("--records must be at least 4")

    workdir = args.workdir.resolve()
    print(f"Preparing input in {workdir} ...", file=sys.stderr)
    full_input = ensure_input(workdir, args.records)
    quarter_input = ensure_input(workdir, args.records // 4)
    outputs = workdir / f"out-{os.getpid()}"
    plan = {
        "baseline": {"kind": "baseline", "input": full_input},
        "no-near": {"kind": "pipeline", "input": full_input, "near_dedup": False, "workers": args.workers},
        "full": {"kind": "pipeline", "input": full_input, "near_dedup": True, "workers": args.workers},
        "full-1/4": {"kind": "pipeline", "input": quarter_input, "near_dedup": True, "workers": args.workers},
    }
    runs = {}
    try:
        for label, spec in plan.items():
            out = outputs / label.replace("/", "_")
            spec = {**spec, "input": spec["input"].as_uri(), "output": out.as_uri()}
            runs[label] = measure(label, spec)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(outputs, ignore_errors=True)
    print(f"\nPipeline runs with workers={args.workers} on {os.cpu_count()} CPUs.")
    results = report(runs, args.records, full_input.stat().st_size)
    failed = [name for name, ok, _ in results if not ok]
    if failed and not args.no_fail:
        print(f"\n{len(failed)} target(s) missed.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
