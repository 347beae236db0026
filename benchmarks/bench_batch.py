"""`liverloc batch` throughput: cases per hour with 2 workers against serial (1 worker), in one run.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_batch.py [--cases 6] [--workers 2] [--size small] [--classify]

Generates `--cases` phantoms (seeds 100.., 1-2 lesions), then runs `liverloc batch` on them as its own process twice
into fresh folders: with one worker (serial: one case at a time, the same code) and with `--workers` workers on a
Dask LocalCluster. Reports wall time (cluster start included) and cases per hour of each, and the speed-up. On a
machine with fewer cores than workers, or where one case already uses every core (SimpleITK's filters are
multi-threaded), the speed-up stays small.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverLocalization"))


def timed_batch(table: Path, out: Path, workers: int, classify: bool) -> float:
    """Wall seconds of one `liverloc batch` process; every case must succeed."""
    command = [sys.executable, "-m", "LiverLocalizationLib.cli", "-q", "batch", str(table), "--out", str(out),
               "--workers", str(workers), "--no-figures"] + ([] if classify else ["--no-classify"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "LiverLocalization")}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"liverloc batch failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--classify", action="store_true", help="classify lesions too (default --no-classify)")
    args = parser.parse_args()

    from LiverLocalizationLib.phantom import generate_phantom, write_phantom

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = ["case,ct,landmarks"]
        for i in range(args.cases):
            write_phantom(generate_phantom(100 + i, size=args.size, n_lesions=1 + i % 2), root / f"c{i}")
            lines.append(f"c{i},c{i}/ct.nii.gz,c{i}/landmarks.mrk.json")
        table = root / "cases.csv"
        table.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{args.cases} {args.size} phantoms, {os.cpu_count()} CPU cores, "
              f"{'with' if args.classify else 'without'} classification, no figures")
        results = {}
        for workers in (1, args.workers):
            seconds = timed_batch(table, root / f"out{workers}", workers, args.classify)
            results[workers] = seconds
            print(f"  {workers} worker(s): {seconds:6.1f} s, {args.cases / seconds * 3600:6.0f} cases/hour")
        print(f"  speed-up with {args.workers} workers: {results[1] / results[args.workers]:.2f}x")


if __name__ == "__main__":
    main()
