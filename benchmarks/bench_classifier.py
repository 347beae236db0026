"""Lesion classifier speed on 2 CPU threads: per-lesion inference against the 50 ms budget, Grad-CAM,
patch extraction from a full-size CT against the naive whole-volume resampling, training throughput.

Run:  PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/bench_classifier.py [--weights FILE]
Prints each figure beside its baseline, both measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LiverLocalization"))

from LiverLocalizationLib import classifier, geometry  # noqa: E402


def _time(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def full_size_ct(n_lesions: int = 4):
    """A 512×512×120 CT (0.75×0.75×2 mm) with spherical lesions, and its instance labels."""
    size = (512, 512, 120)
    ct = sitk.Image(size, sitk.sitkInt16) + 105
    ct.SetSpacing((0.75, 0.75, 2.0))
    lab = sitk.Image(size, sitk.sitkUInt16)
    lab.CopyInformation(ct)
    arr = sitk.GetArrayFromImage(ct)
    larr = sitk.GetArrayFromImage(lab)
    zz, yy, xx = np.ogrid[: size[2], : size[1], : size[0]]
    for k in range(1, n_lesions + 1):
        c = np.array([100 + 80 * k, 200 + 20 * k, 30 + 15 * k])  # x, y, z index
        r_mm = 6 + 4 * k
        inside = ((xx - c[0]) * 0.75) ** 2 + ((yy - c[1]) * 0.75) ** 2 + ((zz - c[2]) * 2.0) ** 2 <= r_mm ** 2
        arr[inside] = 40 + 20 * k
        larr[inside] = k
    return geometry.copy_geometry(arr, ct), geometry.copy_geometry(larr, ct)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default=None, help="weights (default: the shipped model, else random weights)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.weights or classifier.DEFAULT_WEIGHTS.is_file():
        model = classifier.load_model(args.weights)
        source = str(model.path)
    else:
        torch.manual_seed(0)
        model = classifier.LesionClassifier(classifier.build_model(), {"patch": classifier.PATCH_DEFAULTS})
        source = "random weights (no shipped model yet)"
    n_params = sum(p.numel() for p in model.net.parameters())
    print(f"model: {source}; {n_params} parameters, {n_params * 4 / 1e6:.2f} MB float32 (budget 20 MB)")

    ct, lab = full_size_ct()
    patch = classifier.extract_patch(ct, lab, 2)
    t_forward2 = _time(lambda: model.predict_proba(patch[None]), 20)
    torch.set_num_threads(1)   # what classify_lesions uses for single patches
    t_forward = _time(lambda: model.predict_proba(patch[None]), 20)
    t_cam = _time(lambda: classifier.gradcam(model, patch), 10)
    torch.set_num_threads(2)
    t_extract = _time(lambda: classifier.extract_patch(ct, lab, 2), 3)
    print(f"per lesion: forward {t_forward * 1e3:.1f} ms on 1 thread (budget 50 ms, ratio {t_forward / 0.05:.2f}; "
          f"2 threads: {t_forward2 * 1e3:.1f} ms); Grad-CAM {t_cam * 1e3:.1f} ms; "
          f"patch extraction from a 512×512×120 CT {t_extract * 1e3:.1f} ms")

    # baseline: the patch resampled from the whole CT instead of a region around the lesion
    _, ref = classifier.extract_patch(ct, lab, 2, return_reference=True)
    t_naive = _time(lambda: sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
                    and sitk.Resample(sitk.Cast(sitk.Equal(lab, 2), sitk.sitkFloat32), ref), 3)
    print(f"patch extraction: region-of-interest {t_extract * 1e3:.1f} ms vs whole-volume resampling "
          f"{t_naive * 1e3:.1f} ms (x{t_naive / t_extract:.1f} faster)")

    t0 = time.perf_counter()
    rows, cam = classifier.classify_lesions(ct, lab, model)
    t_all = time.perf_counter() - t0
    print(f"classify_lesions on the 512×512×120 CT, {len(rows)} lesions with Grad-CAM volume: {t_all:.2f} s "
          f"({t_all / len(rows) * 1e3:.0f} ms per lesion)")

    net = classifier.build_model().train()
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    n = int(classifier.PATCH_DEFAULTS["size"])
    xb = torch.randn(32, 2, n, n, n)
    yb = torch.randint(0, 4, (32,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()

    t_step = _time(step, 3)
    print(f"training at {n}^3: {t_step / 32 * 1e3:.1f} ms per patch (batch 32, forward + backward + step); "
          f"40 epochs of 640 patches ≈ {t_step / 32 * 640 * 40 / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
