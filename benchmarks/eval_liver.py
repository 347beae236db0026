"""Liver extraction alone (`liver.extract_liver`, as `liverloc run` calls it) on full phantoms and the real case.

The whole tissue stage (`eval_tissue.py`) takes about 25 s a case; the liver mask alone takes about 3 s, so a
parameter of the liver extraction can be compared on many phantoms. Generating a full phantom takes longer
than segmenting it: `--cache DIR` keeps each phantom's CT, true liver and landmarks there for the next run.

Usage (from the repository root):
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/eval_liver.py --seeds 0 1 2 [--no-real]
        [--cache DIR] [--set separation_mm=8 --set erosion_mm=6] [--jobs 2]

Per case: liver Dice (truth = parenchyma, lesions, hepatic and portal veins; IVC excluded; ircadb1_1: its
mask_liver), the volume (ml) of the mask outside the truth and of the truth outside the mask, the three largest
connected false parts (ml; a leak into a neighbouring organ is one large part), seconds, and the phantom's
lesions of 10 mm or more that the mask leaves partly out (less than 90 % of their volume inside: a tumour at
the surface the lesion stage cannot find whole). Then the mean Dice over the phantoms, the number of phantoms
with a false part of 50 ml or more, and the number of lesions cut.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverLocalization"))

from LiverLocalizationLib import io, labels, liver, metrics  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "ircadb1_1"
LEAK_ML = 50.0
INCLUDED = 0.9  # a lesion with less of its volume inside the liver mask is reported as cut


def load_phantom(seed: int, cache: Path | None):
    """(CT, true liver bool array, landmarks, true lesion instances, ids of the lesions of 10 mm or more) of full
    phantom `seed`, from `cache` when it is there."""
    if cache is not None and (cache / f"{seed}.nii.gz").exists():
        saved = np.load(cache / f"{seed}.npz")
        if "lesions" in saved:
            marks = {k: np.asarray(v, float) for k, v in json.loads(str(saved["landmarks"])).items()}
            return (io.read_image(cache / f"{seed}.nii.gz"), saved["liver"], marks, saved["lesions"],
                    [int(i) for i in saved["big_lesions"]])
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(seed, size="full")
    truth = np.isin(sitk.GetArrayViewFromImage(ph.truth_tissue), labels.TRUTH_LIVER)
    lesion_ids = sitk.GetArrayFromImage(ph.truth_lesions)
    big = [int(row["id"]) for row in ph.lesions if row["diameter_mm"] >= 10]
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache / f"{seed}.npz", liver=truth, lesions=lesion_ids, big_lesions=np.array(big, int),
                            landmarks=json.dumps({k: [float(c) for c in v] for k, v in ph.landmarks.items()}))
        sitk.WriteImage(ph.ct, str(cache / f"{seed}.nii.gz"))
    return ph.ct, truth, ph.landmarks, lesion_ids, big


def evaluate(case: str, cache: Path | None, options: dict) -> dict:
    if case == "real":
        ct = io.read_image(REAL / "ct.nii.gz")
        truth = sitk.GetArrayFromImage(io.read_image(REAL / "mask_liver.nii.gz")) > 0
        marks = io.read_markups(REAL / "landmarks.mrk.json")
        lesion_ids, big = None, []
    else:
        ct, truth, marks, lesion_ids, big = load_phantom(int(case), cache)
    ct = io.validate_ct(ct)
    t0 = time.perf_counter()
    mask = sitk.GetArrayFromImage(liver.extract_liver(ct, marks, raw=True, **options)) > 0
    seconds = time.perf_counter() - t0
    ml = float(np.prod(ct.GetSpacing())) / 1000.0
    false = mask & ~truth
    parts, _ = ndimage.label(false)
    sizes = np.sort(np.bincount(parts.ravel())[1:])[::-1] * ml
    # tumours the mask leaves partly out: lesions of 10 mm or more less than INCLUDED inside it
    inside = {i: float(mask[lesion_ids == i].mean()) for i in big if (lesion_ids == i).any()}
    return {"case": case, "dice": metrics.dice(mask, truth), "false_ml": float(false.sum() * ml),
            "missed_ml": float((truth & ~mask).sum() * ml), "largest_false_ml": [float(s) for s in sizes[:3]],
            "seconds": seconds, "lesions_cut": [f"{i}:{v:.2f}" for i, v in inside.items() if v < INCLUDED]}


def parse_option(text: str) -> tuple[str, float | bool]:
    key, _, value = text.partition("=")
    if not value:
        raise argparse.ArgumentTypeError(f"--set wants NAME=VALUE, got {text!r}")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, float(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[100, 101, 102, 103, 104])
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--cache", type=Path, default=None, help="folder that keeps the generated phantoms")
    parser.add_argument("--set", type=parse_option, action="append", default=[], metavar="NAME=VALUE",
                        help="a keyword argument of liver.extract_liver (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="cases run side by side")
    args = parser.parse_args(argv)
    options = dict(args.set)
    cases = [str(s) for s in args.seeds]
    if not args.no_real and (REAL / "ct.nii.gz").exists():
        cases.insert(0, "real")
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(evaluate, cases, [args.cache] * len(cases), [options] * len(cases)))
    print(f"liver.extract_liver{options or ''}")
    print(f"{'case':>6} {'Dice':>6} {'false ml':>9} {'missed ml':>10}  largest false parts (ml)   s"
          "    lesions cut (id:share inside)")
    for r in rows:
        parts = ", ".join(f"{s:.1f}" for s in r["largest_false_ml"])
        print(f"{r['case']:>6} {r['dice']:6.3f} {r['false_ml']:9.1f} {r['missed_ml']:10.1f}  {parts:<26} "
              f"{r['seconds']:4.1f}  {' '.join(r['lesions_cut'])}")
    phantoms = [r for r in rows if r["case"] != "real"]
    if phantoms:
        leaks = sum(1 for r in phantoms if r["largest_false_ml"] and r["largest_false_ml"][0] >= LEAK_ML)
        print(f"phantoms: mean Dice {np.mean([r['dice'] for r in phantoms]):.4f} over {len(phantoms)}, "
              f"min {min(r['dice'] for r in phantoms):.3f}; {leaks} with a false part of {LEAK_ML:.0f} ml or more")
        n_cut = sum(len(r["lesions_cut"]) for r in phantoms)
        print(f"lesions of 10 mm or more with less than {INCLUDED:.0%} of their volume in the mask: {n_cut}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
