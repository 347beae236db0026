"""Tumour detection on the real CT with tumour truth (../shared/data/lits117), and on it re-acquired; prints tables.

Usage (from the repository root):
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/eval_real_tumours.py [--variants original weak ...]
        [--no-end-to-end] [--no-clicks] [--json out.json]

lits117 is a real portal-venous CT (LiTS case 117, the liver's box, 1.36 x 1.36 x 1.61 mm) with 70 tumours, 22
of them of 10 mm or more (equivalent-sphere diameter). Per variant, three runs of the pipeline's tissue stage
(`pipeline.tissue_stage`, `liverloc run`'s defaults):

  with mask     the reference liver mask given (what the lesion model does on a correct liver)
  end to end    the liver extracted from the CT with the case's landmarks
  clicks        with the reference mask, one point clicked inside each tumour of 10 mm or more (its deepest
                voxel, the one farthest from its border) and the detection off (`lesion_false_alarms` 0), so
                that every lesion comes from its click; "clicks + detection": the same points with the default
                detection (a click inside a detected lesion keeps it): what a user gets

Figures: tumour Dice pooled over all tumour voxels; tumours of 10 mm or more found (at least half of their
voxels in detected lesions); false positives (detected lesions with less than 10 % of their voxels in a
tumour of any size); for end to end the share of tumour voxels inside the extracted liver and the liver Dice;
for clicks the median and the lowest per-tumour Dice (the clicked lesion against the tumour it was clicked in).

The variants re-acquire the case the ways the CTs the project is measured on differ (see `make_variant`):
  original     as stored
  weak         weak enhancement and strong noise: HU above 0 scaled by 0.55 (parenchyma 119 -> 66 HU, tumours
               69 -> 38 HU) and correlated noise of 24 HU added (about 1 noise sd of contrast)
  lowcontrast  the tumours 25 HU brighter (blurred mask; contrast 50 -> 25 HU) and correlated noise of 20 HU added
  thick        slices of 4.8 mm (the mean of 3)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverLocalization"))

from LiverLocalizationLib import geometry, io, metrics, pipeline  # noqa: E402

CASE = ROOT.parent / "shared" / "data" / "lits117"
VARIANTS = ("original", "weak", "lowcontrast", "thick")
FOUND_COVER = 0.5   # a tumour is found when detected lesions cover at least this share of it
FP_OVERLAP = 0.1    # a detected lesion with less than this share of its voxels in tumours is a false positive


def _correlated_noise(shape, sd: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, (0.3, 0.7, 0.7))
    return noise * np.float32(sd / noise.std())


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _thick(image: sitk.Image, k: int, kind: str) -> sitk.Image:
    """Slices k times thicker: the mean of k slices (masks: mean >= 0.5; labels: the middle slice)."""
    a = sitk.GetArrayFromImage(image)
    n = a.shape[0] // k * k
    blocks = a[:n].reshape(n // k, k, *a.shape[1:])
    if kind == "mean":
        out = blocks.astype(np.float32).mean(axis=1)
    elif kind == "mask":
        out = (blocks.astype(np.float32).mean(axis=1) >= 0.5).astype(a.dtype)
    else:
        out = blocks[:, k // 2]
    result = sitk.GetImageFromArray(out)
    sx, sy, sz = image.GetSpacing()
    result.SetSpacing((sx, sy, sz * k))
    result.SetDirection(image.GetDirection())
    result.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, (k - 1) / 2.0)))
    return result


def make_variant(name: str, ct: sitk.Image, liver: sitk.Image, tumours: sitk.Image):
    """(ct, liver mask, tumour instances) of a variant (module docstring)."""
    a = sitk.GetArrayFromImage(ct).astype(np.float32)
    if name == "original":
        return ct, liver, tumours
    if name == "weak":
        b = np.where(a > 0, 0.55 * a, a) + _correlated_noise(a.shape, 24.0, 1)
        return _like(b, ct), liver, tumours
    if name == "lowcontrast":
        w = ndimage.gaussian_filter((sitk.GetArrayFromImage(tumours) > 0).astype(np.float32), 0.8)
        return _like(a + 25.0 * w + _correlated_noise(a.shape, 20.0, 2), ct), liver, tumours
    if name == "thick":
        return _thick(ct, 3, "mean"), _thick(liver, 3, "mask"), _thick(tumours, 3, "label")
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def big_tumours(tumours: np.ndarray, voxel_mm3: float, min_mm: float = 10.0) -> list[int]:
    ids, counts = np.unique(tumours[tumours > 0], return_counts=True)
    diameters = (6.0 * counts * voxel_mm3 / np.pi) ** (1.0 / 3.0)
    return [int(i) for i, d in zip(ids, diameters) if d >= min_mm]


def score(lesions: np.ndarray, tumours: np.ndarray, big: list[int]) -> dict:
    """Pooled tumour Dice, tumours >= 10 mm found, false positives (module docstring)."""
    found = [i for i in big if (lesions[tumours == i] > 0).mean() >= FOUND_COVER]
    fps = []
    for j, sl in enumerate(ndimage.find_objects(lesions.astype(np.int32)), start=1):
        if sl is not None:
            comp = lesions[sl] == j
            if (tumours[sl][comp] > 0).mean() < FP_OVERLAP:
                fps.append(round(float(comp.sum()), 0))
    return {"dice": metrics.dice(lesions > 0, tumours > 0), "found": len(found), "big": len(big),
            "missed": [i for i in big if i not in found], "false_positives": len(fps), "n_lesions": int(lesions.max())}


def run_with_mask(ct, liver, tumours, landmarks, big, voxel_mm3) -> dict:
    t0 = time.perf_counter()
    _, res, _ = pipeline.tissue_stage(io.validate_ct(ct), landmarks, liver, pipeline.PipelineOptions())
    out = score(sitk.GetArrayFromImage(res.lesion_labels), sitk.GetArrayFromImage(tumours), big)
    return {**out, "seconds": time.perf_counter() - t0}


def run_end_to_end(ct, liver, tumours, landmarks, big, voxel_mm3) -> dict:
    t0 = time.perf_counter()
    _, res, _ = pipeline.tissue_stage(io.validate_ct(ct), landmarks, None, pipeline.PipelineOptions())
    tum = sitk.GetArrayFromImage(tumours)
    mask = sitk.GetArrayFromImage(res.liver_mask) > 0
    out = score(sitk.GetArrayFromImage(res.lesion_labels), tum, big)
    return {**out, "tumour_in_liver": float(mask[tum > 0].mean()),
            "liver_dice": metrics.dice(mask, sitk.GetArrayFromImage(liver) > 0), "seconds": time.perf_counter() - t0}


def deepest_points_lps(tumours: np.ndarray, ids: list[int], image: sitk.Image) -> dict[str, np.ndarray]:
    """For each tumour, the LPS point of its voxel farthest from its border (where a user clicks inside it)."""
    sp = np.asarray(image.GetSpacing())[::-1]
    points = {}
    for i in ids:
        depth = geometry.depth_mm(tumours == i, sp)
        idx = np.unravel_index(int(np.argmax(depth)), depth.shape)
        points[f"tumour {i}"] = np.asarray(image.TransformIndexToPhysicalPoint([int(v) for v in idx[::-1]]))
    return points


def run_clicks(ct, liver, tumours, landmarks, big, voxel_mm3, detect: bool = False) -> dict:
    """One click inside each tumour >= 10 mm, with the reference liver mask. detect=False: the automatic detection
    off (`lesion_false_alarms=0`), every lesion from its click; True: the default detection, and a click inside a
    detected lesion keeps it (what a user gets). Per tumour, the Dice of the lesion under its click."""
    tum = sitk.GetArrayFromImage(tumours)
    points = deepest_points_lps(tum, big, ct)
    options = pipeline.PipelineOptions(lesion_false_alarms=pipeline.PipelineOptions().lesion_false_alarms if detect else 0.0,
                                       lesion_points=points)
    t0 = time.perf_counter()
    _, res, _ = pipeline.tissue_stage(io.validate_ct(ct), landmarks, liver, options)
    lab = sitk.GetArrayFromImage(res.lesion_labels)
    dices = []
    for i, point in zip(big, points.values()):
        index = ct.TransformPhysicalPointToIndex([float(c) for c in point])[::-1]
        lesion_id = int(lab[index])
        dices.append(metrics.dice(lab == lesion_id, tum == i) if lesion_id else 0.0)
    clicked = sum(row.get("source") == "clicked" for row in res.lesion_rows)
    return {"median_dice": float(np.median(dices)), "min_dice": float(np.min(dices)), "clicked": len(big),
            "segmented": int(sum(d > 0 for d in dices)), "from_clicks": clicked, "dices": [round(d, 3) for d in dices],
            "seconds": time.perf_counter() - t0}


def run_clicks_with_detection(ct, liver, tumours, landmarks, big, voxel_mm3) -> dict:
    return run_clicks(ct, liver, tumours, landmarks, big, voxel_mm3, detect=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no-end-to-end", action="store_true")
    parser.add_argument("--no-clicks", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    if not (CASE / "ct.nii.gz").exists():
        print(f"{CASE} not found: nothing to evaluate")
        return 0
    ct0, liver0 = io.read_image(CASE / "ct.nii.gz"), io.read_image(CASE / "mask_liver.nii.gz")
    tumours0 = io.read_image(CASE / "mask_tumor_instances.nii.gz")
    landmarks = io.read_markups(CASE / "landmarks.mrk.json")
    results = {}
    print("| variant | run | tumour Dice | found >= 10 mm | false positives | other | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.variants:
        ct, liver, tumours = make_variant(name, ct0, liver0, tumours0)
        voxel_mm3 = float(np.prod(ct.GetSpacing()))
        big = big_tumours(sitk.GetArrayFromImage(tumours), voxel_mm3)
        runs = [("with mask", run_with_mask)]
        if not args.no_end_to_end:
            runs.append(("end to end", run_end_to_end))
        if not args.no_clicks:
            runs += [("clicks", run_clicks), ("clicks + detection", run_clicks_with_detection)]
        for label, fn in runs:
            r = fn(ct, liver, tumours, landmarks, big, voxel_mm3)
            results[f"{name}/{label}"] = r
            if label.startswith("clicks"):
                print(f"| {name} | {label} | | {r['segmented']}/{r['clicked']} segmented | | per-tumour Dice median "
                      f"{r['median_dice']:.3f}, lowest {r['min_dice']:.3f} | {r['seconds']:.1f} |", flush=True)
                continue
            other = (f"tumour voxels in liver {r['tumour_in_liver']:.3f}, liver Dice {r['liver_dice']:.3f}"
                     if "tumour_in_liver" in r else "")
            print(f"| {name} | {label} | {r['dice']:.3f} | {r['found']}/{r['big']} | {r['false_positives']} | {other} | "
                  f"{r['seconds']:.1f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
