"""Speed and memory of denoise + EM + liver extraction on a full-size CT, beside the baselines.

Usage (from the repository root):
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/bench_tissue.py [--ct PATH --landmarks PATH]
        [--method curvature] [--repeat 1]

Default input: ../shared/data/ircadb1_1 (512×512×129, 0.57×0.57×1.6 mm) with its landmarks; without
it, a `full` phantom. Prints, measured in this one run:
  - ours: denoise (default method), segment_tissues (liver extraction, EM fit, MRF, lesions), total,
    and the peak resident memory of the process (ru_maxrss) after our stages;
  - baselines: SimpleITK Median radius 1 voxel on the whole CT, and sklearn GaussianMixture (K = ours,
    default settings) on the same liver intensities our EM fitted, with the run-time ratios.
Target (issue 3): denoise + EM + extraction <= 20 s on 2 cores, peak memory <= 3 GB.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverLocalization"))

from LiverLocalizationLib import denoise, io, lesions, tissue_model  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "ircadb1_1"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=Path, default=REAL / "ct.nii.gz")
    parser.add_argument("--landmarks", type=Path, default=REAL / "landmarks.mrk.json")
    parser.add_argument("--method", default="curvature", choices=denoise.METHODS)
    args = parser.parse_args(argv)

    if args.ct.exists():
        ct = io.read_image(args.ct)
        landmarks = io.read_markups(args.landmarks)
        name = str(args.ct)
    else:
        from LiverLocalizationLib.phantom import generate_phantom

        ph = generate_phantom(100, size="full")
        ct, landmarks, name = ph.ct, ph.landmarks, "phantom 100 full"
    print(f"input: {name}, size {ct.GetSize()}, spacing {tuple(round(s, 3) for s in ct.GetSpacing())} mm, "
          f"threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}")
    base_mb = _peak_mb()

    t0 = time.perf_counter()
    den = denoise.denoise(ct, args.method)
    t1 = time.perf_counter()
    t_denoise = t1 - t0
    res = tissue_model.segment_tissues(den, landmarks)
    t2 = time.perf_counter()
    ours_mb = _peak_mb()
    total = t2 - t0
    print(f"ours: denoise ({args.method}) {t1 - t0:.1f} s, tissues {t2 - t1:.1f} s "
          f"({', '.join(f'{k} {v:.1f}' for k, v in res.timings.items())}), total {total:.1f} s; "
          f"peak memory {ours_mb:.0f} MB (process before stages {base_mb:.0f} MB)")

    # baseline 1: SimpleITK median radius 1 on the whole CT
    ct_float = sitk.Cast(ct, sitk.sitkFloat32)
    t0 = time.perf_counter()
    sitk.Median(ct_float, [1, 1, 1])
    t_median = time.perf_counter() - t0
    # baseline 2: sklearn GaussianMixture on the same liver intensities our EM fitted
    liver = sitk.GetArrayViewFromImage(res.liver_mask) > 0
    values = sitk.GetArrayViewFromImage(den)[liver].astype(np.float64)
    k = res.model.n_classes
    t0 = time.perf_counter()
    model_ours, _ = lesions.liver_mixture(values, k)
    t_em = time.perf_counter() - t0
    t0 = time.perf_counter()
    model_plain = tissue_model.fit_gaussian_mixture(values, k)
    t_plain = time.perf_counter() - t0
    from sklearn.mixture import GaussianMixture

    t0 = time.perf_counter()
    GaussianMixture(k, random_state=0).fit(np.clip(values, -200, 500)[:, None])
    t_sklearn = time.perf_counter() - t0
    print(f"baseline SimpleITK Median r=1 (whole CT): {t_median:.1f} s; our denoise ({args.method}) / median = "
          f"{t_denoise / t_median:.2f}")
    print(f"EM on {values.size} liver voxels, K={k}: ours (anchored, histogram) {t_em:.2f} s, ours (plain "
          f"fit_gaussian_mixture) {t_plain:.2f} s, sklearn GaussianMixture {t_sklearn:.2f} s "
          f"-> sklearn / ours = {t_sklearn / max(t_plain, 1e-9):.0f}x")
    print(f"ratios in this run: our denoise+tissues / SimpleITK median = {total / t_median:.2f}; "
          f"plain EM means {np.round(model_plain.means_hu, 1).tolist()} HU")
    print(f"target: total <= 20 s -> {'met' if total <= 20 else 'NOT met'}; peak memory <= 3072 MB -> "
          f"{'met' if ours_mb <= 3072 else 'NOT met'}")
    del model_ours
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
