"""The lesion classifier on real tumours: lits117's tumours of 10 mm or more, all malignant (LiTS).

Usage (from the repository root):
    .venv/bin/python benchmarks/eval_real_classifier.py [--weights FILE] [--boot 2000] [--json FILE]

LiTS tumours are primary or secondary liver cancers, so every tumour is malignant: the figure is the share of
tumours of 10 mm or more (equivalent-sphere diameter) that the shipped network calls malignant (malignant
probability >= 0.5, calibrated: metastasis + HCC), with a 95 % bootstrap interval over the tumours (one patient:
the interval says how many tumours were measured, not how patients vary). Three sets of masks:
- *reference*: each tumour's reference mask;
- *detected, reference liver*: the lesions `liverloc run` finds with the reference liver mask given, each
  matched to the tumour holding most of its voxels (at least half of them on that tumour);
- *detected, end to end*: the same with the liver extracted from the CT and the case's landmarks.
The CT given to the network is the raw CT, as `liverloc run` gives it. Grad-CAM: for each reference tumour, the
share of the map's mass on its patch that lies within the tumour plus 5 mm (what the map shows should be the
tumour), with the share a uniform map would have for comparison. Target (issue 30): >= 0.9 called malignant on
reference and detected masks; Grad-CAM mass >= 0.5. No real benign lesion is available here, so the benign side
is measured on phantoms only (`liverloc evaluate-classifier`).
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

from LiverLocalizationLib import classifier, geometry, io, pipeline  # noqa: E402

CASE = ROOT.parent / "shared" / "data" / "lits117"
MIN_DIAMETER_MM = 10.0
GRADCAM_MARGIN_MM = 5.0


def big_tumour_ids(tumours: np.ndarray, voxel_mm3: float) -> list[int]:
    """Instance ids whose equivalent-sphere diameter is at least MIN_DIAMETER_MM."""
    ids, counts = np.unique(tumours[tumours > 0], return_counts=True)
    diameters = (6.0 * counts * voxel_mm3 / np.pi) ** (1.0 / 3.0)
    return [int(i) for i, d in zip(ids, diameters) if d >= MIN_DIAMETER_MM]


def bootstrap_share(called: np.ndarray, draws: int, seed: int = 0) -> tuple[float, float, float]:
    """Share of True and its 95 % percentile bootstrap interval over the items."""
    called = np.asarray(called, bool)
    if called.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    shares = called[rng.integers(0, called.size, (draws, called.size))].mean(axis=1)
    return float(called.mean()), float(np.percentile(shares, 2.5)), float(np.percentile(shares, 97.5))


def matched_lesions(lesions: np.ndarray, tumours: np.ndarray, wanted: list[int]) -> dict[int, int]:
    """Detected lesion id -> the wanted tumour holding at least half of its voxels (unmatched lesions left out)."""
    out = {}
    for lesion_id, sl in enumerate(ndimage.find_objects(lesions.astype(np.int32)), start=1):
        if sl is None:
            continue
        under = tumours[sl][lesions[sl] == lesion_id]
        ids, counts = np.unique(under, return_counts=True)
        best = int(ids[np.argmax(counts)])
        if best in wanted and counts.max() >= 0.5 * under.size:
            out[lesion_id] = best
    return out


def classify(ct: sitk.Image, label_map: np.ndarray, model) -> list[dict]:
    rows, _ = classifier.classify_lesions(ct, geometry.copy_geometry(label_map.astype(np.uint16), ct), model)
    return rows


def gradcam_shares(ct: sitk.Image, tumours: np.ndarray, ids: list[int], model) -> tuple[list[float], list[float]]:
    """Per tumour: Grad-CAM mass within the tumour + GRADCAM_MARGIN_MM on its patch, and a uniform map's share."""
    label_map = geometry.copy_geometry(np.where(np.isin(tumours, ids), tumours, 0).astype(np.uint16), ct)
    shares, uniform = [], []
    for tumour_id in ids:
        patch, ref = classifier.extract_patch(ct, label_map, tumour_id, model.patch, return_reference=True)
        cam = classifier.gradcam(model, patch)
        inside = patch[-1] > 0.5
        near = ndimage.distance_transform_edt(~inside, sampling=ref.GetSpacing()[::-1]) <= GRADCAM_MARGIN_MM
        shares.append(float(cam[near].sum() / cam.sum()) if cam.sum() > 0 else float("nan"))
        uniform.append(float(near.mean()))
    return shares, uniform


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=None, help="weights to measure (default: the shipped ones)")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap draws")
    p.add_argument("--no-end-to-end", action="store_true", help="skip the end-to-end detection")
    p.add_argument("--json", type=Path, default=None, help="also write the figures and every row here")
    args = p.parse_args(argv)
    if not (CASE / "ct.nii.gz").exists():
        print(f"{CASE} not found: nothing to evaluate")
        return 0
    t0 = time.perf_counter()
    model = classifier.load_model(args.weights)
    ct = io.validate_ct(io.read_image(CASE / "ct.nii.gz"))
    liver = io.read_image(CASE / "mask_liver.nii.gz")
    landmarks = io.read_markups(CASE / "landmarks.mrk.json")
    tumours = sitk.GetArrayFromImage(io.read_image(CASE / "mask_tumor_instances.nii.gz"))
    big = big_tumour_ids(tumours, float(np.prod(ct.GetSpacing())))

    results: dict[str, dict] = {}
    reference_rows = classify(ct, np.where(np.isin(tumours, big), tumours, 0), model)
    results["reference"] = {"rows": reference_rows, "tumours": len(big)}
    runs = [("detected, reference liver", liver)] + ([] if args.no_end_to_end else [("detected, end to end", None)])
    options = pipeline.PipelineOptions(classify=False)
    for name, mask in runs:
        _, tissues, _ = pipeline.tissue_stage(ct, landmarks, mask, options)
        detected = sitk.GetArrayFromImage(tissues.lesion_labels)
        match = matched_lesions(detected, tumours, big)
        kept = np.where(np.isin(detected, list(match)), detected, 0)
        rows = classify(ct, kept, model) if match else []
        for row in rows:
            row["tumour"] = match[row["id"]]
        results[name] = {"rows": rows, "tumours": len(set(match.values()))}

    print(f"lits117: {len(big)} tumours of {MIN_DIAMETER_MM:g} mm or more, all malignant; weights {model.path}")
    print("| masks | lesions (tumours) | called malignant (95 % CI) | kinds called | mean malignant probability |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        rows = r["rows"]
        called = np.array([row["malignant_probability"] >= 0.5 for row in rows])
        share, lo, hi = bootstrap_share(called, args.boot)
        kinds = {k: sum(row["kind"] == k for row in rows) for k in model.kinds}
        mean_p = float(np.mean([row["malignant_probability"] for row in rows])) if rows else float("nan")
        r.update(share=share, ci=[lo, hi], kinds=kinds)
        print(f"| {name} | {len(rows)} ({r['tumours']}) | {share:.2f} [{lo:.2f}, {hi:.2f}] | "
              + ", ".join(f"{k} {n}" for k, n in kinds.items() if n) + f" | {mean_p:.2f} |")
    shares, uniform = gradcam_shares(ct, tumours, big, model)
    results["gradcam"] = {"shares": shares, "uniform": uniform}
    print(f"Grad-CAM mass within the tumour + {GRADCAM_MARGIN_MM:g} mm (reference masks): median "
          f"{np.nanmedian(shares):.2f}, mean {np.nanmean(shares):.2f}, lowest {np.nanmin(shares):.2f} "
          f"(a uniform map: median {np.median(uniform):.2f}); {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
