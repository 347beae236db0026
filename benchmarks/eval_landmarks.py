"""Accuracy and speed of the proposed landmarks (issue 29); prints one table.

Usage (from the repository root):
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/eval_landmarks.py [--seeds 300 301 302] [--no-real]

Per case: the distance (mm) of each proposed landmark to the reference (real cases: ../shared/data/*/landmarks.mrk.json,
placed on the borders of the reference Couinaud labels; phantoms: the generator's landmarks, on the vessels), their
median and maximum, the landmarks not found, and the time of `propose_landmarks` with the reference liver mask.
When the proposal holds every landmark the Couinaud map needs, the mean Dice of the map from the proposed
landmarks against the reference labels is printed beside the Dice from the reference landmarks (as
eval_couinaud.py computes it); otherwise the row says which were missing. Targets (issue 29): median <= 10 mm,
none over 20 mm, Dice within 0.03; phantoms median <= 8 mm; <= 10 s on 512x512x130. Phantom seeds 300+ were never
looked at while developing (seeds 0-3 were).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverLocalization"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_couinaud import dice_per_segment  # noqa: E402
from LiverLocalizationLib import couinaud, io, labels  # noqa: E402
from LiverLocalizationLib.errors import InputError  # noqa: E402
from LiverLocalizationLib.landmarks import propose_landmarks  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def couinaud_dice(liver: sitk.Image, landmarks: dict, truth: np.ndarray) -> float | None:
    """Mean Dice of the plane map from `landmarks` against `truth`; None when a required landmark is missing."""
    if any(k not in landmarks for k in labels.REQUIRED_LANDMARKS):
        return None
    try:
        res = couinaud.map_couinaud(liver, landmarks, None, method="planes")
    except InputError as exc:  # e.g. proposed portal points in the wrong order: the check refuses the map
        print(f"  map refused: {exc}")
        return float("nan")
    return float(np.mean(dice_per_segment(sitk.GetArrayViewFromImage(res.labels), truth)))


def case_row(name: str, ct: sitk.Image, liver: sitk.Image, truth: np.ndarray, reference: dict) -> dict:
    t0 = time.perf_counter()
    proposed = propose_landmarks(ct, liver)
    seconds = time.perf_counter() - t0
    dist = {k: float(np.linalg.norm(proposed.points[k] - reference[k])) for k in labels.LANDMARK_NAMES
            if k in proposed.points and k in reference}
    merged = {**reference, **proposed.points}  # what the user would have after confirming and clicking the rest
    return {"case": name, "dist": dist, "missing": sorted(proposed.missing), "seconds": seconds,
            "dice_reference": couinaud_dice(liver, reference, truth),
            "dice_proposed": couinaud_dice(liver, proposed.points, truth),
            "dice_proposed_plus_clicked": couinaud_dice(liver, merged, truth)}


def real_rows() -> list[dict]:
    rows = []
    for case in ("ircadb1_1", "lits117"):
        folder = DATA / case
        if not folder.is_dir():
            print(f"skipped {case}: {folder} is absent")
            continue
        ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
        liver = sitk.Cast(sitk.ReadImage(str(folder / "mask_liver.nii.gz")) > 0, sitk.sitkUInt8)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "couinaud_labels.nii.gz")))
        rows.append(case_row(case, ct, liver, truth, io.read_markups(folder / "landmarks.mrk.json")))
    return rows


def phantom_row(seed: int) -> dict:
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(seed, size="small")
    liver = sitk.Cast(ph.truth_couinaud > 0, sitk.sitkUInt8)
    return case_row(f"phantom {seed}", ph.ct, liver, sitk.GetArrayFromImage(ph.truth_couinaud), ph.landmarks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[300, 301, 302, 303])
    parser.add_argument("--no-real", action="store_true")
    args = parser.parse_args(argv)
    rows = ([] if args.no_real else real_rows()) + [phantom_row(s) for s in args.seeds]
    header = ["case", *labels.LANDMARK_NAMES, "median", "max", "s", "Dice ref", "Dice proposed", "Dice proposed+clicked"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))

    def fmt(v):
        return "–" if v is None else ("refused" if np.isnan(v) else f"{v:.3f}")

    for r in rows:
        d = list(r["dist"].values())
        cells = [r["case"], *[f"{r['dist'][k]:.1f}" if k in r["dist"] else "missing" for k in labels.LANDMARK_NAMES],
                 f"{np.median(d):.1f}" if d else "–", f"{max(d):.1f}" if d else "–", f"{r['seconds']:.1f}",
                 fmt(r["dice_reference"]), fmt(r["dice_proposed"]), fmt(r["dice_proposed_plus_clicked"])]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
