"""Speed of the Couinaud mapping and lesion localization on a 512 × 512 × 130 liver; prints figures.

Usage (from the repository root):
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/bench_couinaud.py [--repeats 3] [--threads 2]

Case: the real ircadb1_1 liver at full resolution (512 × 512 × 129, 0.57 × 0.57 × 1.6 mm, 2.8 M liver
voxels) when ../shared/data is present, else a synthetic ellipsoid liver of the same size and spacing;
the image is stored with an oblique direction matrix as well, to show that costs nothing.
Target (issue 4): map_couinaud <= 2 s on 2 cores ('planes'; 'vessels' and 'auto', which traces the
vessel mask first, are timed too). Baseline, measured in the same run: the same
plane labelling evaluated on every voxel of the volume (geometry.physical_grid_lps) instead of on the
liver's voxels only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverLocalization"))

from LiverLocalizationLib import couinaud, geometry, io  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "ircadb1_1"
TARGET_S = 2.0


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def load_case():
    if (REAL / "mask_liver.nii.gz").exists():
        liver = io.read_image(REAL / "mask_liver.nii.gz")
        return "ircadb1_1 full resolution", liver, io.read_image(REAL / "mask_vessels_intrahepatic.nii.gz"), \
            io.read_markups(REAL / "landmarks.mrk.json")
    img = sitk.Image(512, 512, 130, sitk.sitkUInt8)
    img.SetSpacing((0.57, 0.57, 1.6))
    grid = geometry.physical_grid_lps(img)
    centre = np.array([110.0, 130.0, 110.0], np.float32)
    k = (((grid - centre) / np.array([95.0, 80.0, 75.0], np.float32)) ** 2).sum(-1)
    liver = geometry.copy_geometry((k <= 1).astype(np.uint8), img)
    marks = {"IVC": centre + [20, 25, 55], "IVC_inferior": centre + [22, 25, -10], "RHV": centre + [-20, 25, 45],
             "MHV": centre + [-5, -10, 50], "LHV": centre + [25, -15, 50], "RPV": centre + [-15, -5, 5],
             "LPV": centre + [30, -5, 15], "UP": centre + [30, -35, 0]}
    return "synthetic ellipsoid", liver, None, {n: np.asarray(p, float) for n, p in marks.items()}


def oblique_copy(image: sitk.Image, rot: np.ndarray) -> sitk.Image:
    out = sitk.Image(image)
    out.SetDirection(tuple((rot @ geometry.direction_matrix(image)).ravel()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    name, liver, vessels, marks = load_case()
    n_liver = int(np.count_nonzero(sitk.GetArrayViewFromImage(liver)))
    print(f"case: {name}, size {liver.GetSize()}, spacing {tuple(round(s, 3) for s in liver.GetSpacing())}, "
          f"{n_liver / 1e6:.2f} M liver voxels, {args.threads} threads, best of {args.repeats}")

    t_planes = best_of(lambda: couinaud.map_couinaud(liver, marks, method="planes"), args.repeats)
    frame = couinaud.landmark_frame(marks)

    def whole_volume():
        pts = geometry.physical_grid_lps(liver).reshape(-1, 3)
        couinaud.plane_labels(pts, frame)

    t_base = best_of(whole_volume, 1)
    print(f"map_couinaud planes:          {t_planes:6.2f} s   (target <= {TARGET_S:.1f} s: "
          f"{'met' if t_planes <= TARGET_S else 'NOT met'})")
    print(f"baseline, every voxel:        {t_base:6.2f} s   (liver voxels only is {t_base / t_planes:.1f}x faster)")

    # oblique storage (LPS content rotated with the landmarks) costs the same
    rot = np.asarray(sitk.VersorTransform((0.2, -0.3, 0.9), 0.3).GetMatrix()).reshape(3, 3)
    origin = np.asarray(liver.GetOrigin())
    obl = oblique_copy(liver, rot)
    obl.SetOrigin(tuple(rot @ (origin - origin) + origin))
    moved = {k: rot @ (np.asarray(v) - origin) + origin for k, v in marks.items()}
    t_obl = best_of(lambda: couinaud.map_couinaud(obl, moved, method="planes"), args.repeats)
    print(f"map_couinaud planes, oblique: {t_obl:6.2f} s")

    if vessels is not None:
        t_terr = best_of(lambda: couinaud.map_couinaud(liver, marks, vessels, method="territories"), 1)
        print(f"map_couinaud territories:     {t_terr:6.2f} s   (vessel graph, hepatic/portal split, KD-tree)")
        t_ves = best_of(lambda: couinaud.map_couinaud(liver, marks, vessels, method="vessels"), args.repeats)
        print(f"map_couinaud vessels:         {t_ves:6.2f} s   (vessel graph, vein profiles, portal split heights)")
        auto = couinaud.map_couinaud(liver, marks, vessels, method="auto")
        t_auto = best_of(lambda: couinaud.map_couinaud(liver, marks, vessels, method="auto"), args.repeats)
        print(f"map_couinaud auto:            {t_auto:6.2f} s   (traces the vessels, then used {auto.method!r})")

    res = couinaud.map_couinaud(liver, marks, method="planes")
    arr = sitk.GetArrayViewFromImage(liver)
    lesions = np.zeros(arr.shape, np.uint16)
    zyx = np.argwhere(arr > 0)
    rng = np.random.default_rng(0)
    for i, c in enumerate(zyx[rng.choice(len(zyx), 10, replace=False)], start=1):
        lesions[max(c[0] - 6, 0):c[0] + 6, max(c[1] - 15, 0):c[1] + 15, max(c[2] - 15, 0):c[2] + 15] = i
    les_img = geometry.copy_geometry(lesions, liver)
    t_loc = best_of(lambda: couinaud.localize_lesions(les_img, res.labels, marks), args.repeats)
    print(f"localize_lesions, 10 lesions: {t_loc:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
