"""Peak memory of the whole pipeline against the CT's size, for `pipeline.check_memory`'s estimate.

Usage (from the repository root):
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/bench_memory.py [--factors 1 3]

Runs `pipeline.run_pipeline` (classification included) on ../shared/data/ircadb1_1 (512×512×129) padded with
air below to `factor` times its slices (the liver's box, where most of the work is, stays the same), each in
its own process, and prints the peak resident memory (ru_maxrss), the bytes per voxel above the process's
memory before the run, and `pipeline.check_memory`'s estimate beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "ircadb1_1"

CHILD = r"""
import resource, sys, time
import numpy as np, SimpleITK as sitk
sys.path.insert(0, {lib!r})
from LiverLocalizationLib import io, pipeline
ct = io.read_image({ct!r}); marks = io.read_markups({marks!r}); k = {factor}
if k > 1:
    arr = sitk.GetArrayFromImage(ct)
    pad = np.full(((k - 1) * arr.shape[0],) + arr.shape[1:], -1000, arr.dtype)
    big = sitk.GetImageFromArray(np.concatenate([pad, arr], axis=0))
    big.SetSpacing(ct.GetSpacing()); big.SetDirection(ct.GetDirection())
    big.SetOrigin(ct.TransformContinuousIndexToPhysicalPoint((0, 0, -(k - 1) * arr.shape[0])))
    ct = big
    del arr, pad, big
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
pipeline.run_pipeline(ct, marks, options=pipeline.PipelineOptions(classify=True))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
n = int(np.prod(ct.GetSize()))
estimate = (pipeline.MEMORY_BYTES_PER_VOXEL * n + pipeline.MEMORY_FIXED_BYTES) / 1e6
print(f"{{'x'.join(map(str, ct.GetSize()))}}: {{n / 1e6:.0f}} M voxels, peak {{peak:.0f}} MB "
      f"({{(peak - before) * 1e6 / n:.1f}} bytes a voxel above the {{before:.0f}} MB before the run), "
      f"check_memory's estimate {{estimate:.0f}} MB, {{time.perf_counter() - t0:.0f}} s")
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args(argv)
    if not REAL.is_dir():
        print(f"{REAL} is absent: nothing to measure")
        return 0
    for factor in args.factors:
        code = CHILD.format(lib=str(ROOT / "LiverLocalization"), ct=str(REAL / "ct.nii.gz"),
                            marks=str(REAL / "landmarks.mrk.json"), factor=factor)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        print(f"factor {factor}: " + out.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
