"""Phantom generation speed and peak memory, small and full size, beside the exact-evaluation baseline.

Run:  PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/bench_phantom.py [--seeds 0 1] [--no-baseline]

Each generation runs in its own process so that its peak resident memory is its own. The baseline
evaluates every smooth field (textures, the liver's signed distance) at every voxel instead of on a
sub-sampled grid with exact refinement near the liver surface; both give the same label maps.
Targets (issue 2): small < 3 s, full < 30 s on 2 cores, full < 3 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {lib!r})
import numpy as np
import LiverLocalizationLib.phantom as P
if {baseline}:
    P._field_step = lambda grid, feature_mm: (1, 1, 1)
t0 = time.perf_counter()
ph = P.generate_phantom(seed={seed}, size={size!r}, oblique={oblique})
dt = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({{"seconds": dt, "peak_mb": rss, "voxels": int(np.prod(ph.ct.GetSize())),
                  "liver_ml": ph.liver_volume_ml, "lesions": len(ph.lesions),
                  "size": list(ph.ct.GetSize()), "spacing": [round(s, 3) for s in ph.ct.GetSpacing()]}}))
"""


def run(seed: int, size: str, baseline: bool = False, oblique: bool = False) -> dict:
    code = CHILD.format(lib=str(ROOT / "LiverLocalization"), seed=seed, size=size, baseline=baseline, oblique=oblique)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--no-baseline", action="store_true", help="skip the slower exact-evaluation baseline")
    args = ap.parse_args()
    print(f"{'case':<28} {'voxels':>11} {'time s':>8} {'peak MB':>8} {'liver ml':>9}  grid")
    rows = []
    for seed in args.seeds:
        for size, oblique in (("small", False), ("small", True), ("full", False), ("full", True)):
            r = run(seed, size, oblique=oblique)
            rows.append((seed, size, oblique, r))
            name = f"seed {seed} {size}{' oblique' if oblique else ''}"
            print(f"{name:<28} {r['voxels']:>11,} {r['seconds']:>8.2f} {r['peak_mb']:>8.0f} {r['liver_ml']:>9.1f}  "
                  f"{r['size']} @ {r['spacing']} mm", flush=True)
    if not args.no_baseline:
        print("\nbaseline: every field evaluated at every voxel (same label maps)")
        for seed in args.seeds[:1]:
            for size in ("small", "full"):
                b = run(seed, size, baseline=True)
                ours = next(r for s, z, o, r in rows if s == seed and z == size and not o)
                print(f"seed {seed} {size:<6} baseline {b['seconds']:7.2f} s, {b['peak_mb']:6.0f} MB | ours "
                      f"{ours['seconds']:6.2f} s, {ours['peak_mb']:6.0f} MB | speed-up x{b['seconds'] / ours['seconds']:.1f}",
                      flush=True)
    small = [r["seconds"] for _, z, _, r in rows if z == "small"]
    full = [r["seconds"] for _, z, _, r in rows if z == "full"]
    peak = max(r["peak_mb"] for *_, r in rows)
    print(f"\nsmall: max {max(small):.2f} s (target < 3 s); full: max {max(full):.2f} s (target < 30 s); "
          f"peak memory {peak:.0f} MB (target < 3000 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
