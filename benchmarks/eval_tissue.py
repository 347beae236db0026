"""Accuracy of the denoise + EM tissue stage on phantoms and on the real case; prints a table.

Usage (from the repository root):
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/eval_tissue.py [--seeds 100 101 102 103 104]
        [--size full|small] [--method curvature] [--no-real] [--oblique] [--flip] [--lesion-false-alarms 0.05]
        [--denoise-figure out.png]

Per phantom, the stage as `liverloc run` does it (liver found on the CT with the landmarks, its box denoised,
EM tissues, lesions): liver Dice (truth = parenchyma, lesions, hepatic and portal veins; IVC excluded), lesion
Dice (all lesion voxels), recall of lesions >= 10 mm (found: detected lesions cover at least half of it,
`metrics.lesion_detection`), false-positive lesions (less than 10 % of their voxels on a true lesion), the share
of true lesion voxels inside the extracted liver ("inliv"); and for the real CT ../shared/data/ircadb1_1 (full
resolution, its landmarks) the liver Dice against mask_liver and the intrahepatic vessel Dice (it has no
tumour truth: "FP" there counts the lesions found). Tumours on real CT with truth: `eval_real_tumours.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverLocalization"))

from LiverLocalizationLib import denoise, io, labels, metrics, pipeline  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "ircadb1_1"
DEFAULT_FALSE_ALARMS = pipeline.PipelineOptions().lesion_false_alarms


def tissue_stage(ct, landmarks, method: str, whole_volume: bool, false_alarms: float = DEFAULT_FALSE_ALARMS):
    """The pipeline's stages 1-2 as `liverloc run` does them: (TissueResult, denoise s, tissue s)."""
    options = pipeline.PipelineOptions(denoise_method=method, denoise_whole_volume=whole_volume,
                                       lesion_false_alarms=false_alarms)
    _, res, timings = pipeline.tissue_stage(io.validate_ct(ct), landmarks, None, options)
    return res, timings["denoise_s"], timings["tissue_s"]


def evaluate_phantom(seed: int, size: str, method: str, oblique: bool = False, flip: bool = False,
                     whole_volume: bool = False, false_alarms: float = DEFAULT_FALSE_ALARMS) -> dict:
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(seed, size=size, oblique=oblique, flip=flip)
    res, t_denoise, t_tissue = tissue_stage(ph.ct, ph.landmarks, method, whole_volume, false_alarms)
    truth = sitk.GetArrayViewFromImage(ph.truth_tissue)
    liver_truth = np.isin(truth, labels.TRUTH_LIVER)
    liver = sitk.GetArrayViewFromImage(res.liver_mask) > 0
    lesion_truth = sitk.GetArrayViewFromImage(ph.truth_lesions)
    lesion = sitk.GetArrayViewFromImage(res.lesion_labels)
    big = [row["id"] for row in ph.lesions if row["diameter_mm"] >= 10]
    match = metrics.lesion_detection(lesion, lesion_truth, [row["id"] for row in ph.lesions])
    found = set(match["found"])
    n_found = sum(i in found for i in big)
    vessel_truth = np.isin(truth, labels.TRUTH_INTRAHEPATIC_VESSELS)
    missed = [f"{row['kind']}:{row['diameter_mm']:.0f}mm" for row in ph.lesions if row["id"] not in found]
    tumour = lesion_truth > 0
    return {
        "case": f"phantom {seed} {size}" + (" oblique" if oblique else "") + (" flip" if flip else ""),
        "seed": seed,
        "liver_dice": metrics.dice(liver, liver_truth),
        "lesion_dice": metrics.dice(lesion > 0, lesion_truth > 0) if (lesion_truth > 0).any() else float("nan"),
        "lesion_overlap": int(np.count_nonzero((lesion > 0) & (lesion_truth > 0))),
        "lesion_sizes": int(np.count_nonzero(lesion > 0) + np.count_nonzero(lesion_truth > 0)),
        "recall_ge10": n_found / len(big) if big else float("nan"),
        "n_ge10": len(big),
        "found_ge10": n_found,
        "n_truth": len(ph.lesions),
        "fp": len(match["false_positives"]),
        "lesion_in_liver": float(liver[tumour].mean()) if tumour.any() else float("nan"),
        "vessel_dice": metrics.dice(sitk.GetArrayViewFromImage(res.vessel_mask) > 0, vessel_truth & liver_truth),
        "denoise_s": t_denoise,
        "tissue_s": t_tissue,
        "missed": ",".join(missed),
    }


def evaluate_real(method: str, whole_volume: bool = False, false_alarms: float = DEFAULT_FALSE_ALARMS) -> dict | None:
    if not (REAL / "ct.nii.gz").exists():
        return None
    ct = io.read_image(REAL / "ct.nii.gz")
    landmarks = io.read_markups(REAL / "landmarks.mrk.json")
    res, t_denoise, t_tissue = tissue_stage(ct, landmarks, method, whole_volume, false_alarms)
    truth = sitk.GetArrayFromImage(io.read_image(REAL / "mask_liver.nii.gz")) > 0
    vessels = sitk.GetArrayFromImage(io.read_image(REAL / "mask_vessels_intrahepatic.nii.gz")) > 0
    liver = sitk.GetArrayViewFromImage(res.liver_mask) > 0
    return {
        "case": "ircadb1_1 full",
        "liver_dice": metrics.dice(liver, truth),
        "lesion_dice": float("nan"), "recall_ge10": float("nan"), "n_truth": -1, "lesion_in_liver": float("nan"),
        "fp": int(sitk.GetArrayViewFromImage(res.lesion_labels).max()),
        "vessel_dice": metrics.dice(sitk.GetArrayViewFromImage(res.vessel_mask) > 0, vessels),
        "denoise_s": t_denoise, "tissue_s": t_tissue, "missed": "(no tumour truth: fp = lesions found)",
    }


def compare_denoising(seed: int, size: str, path: Path) -> None:
    """Run every denoising method on a phantom, print noise / edge / PSNR / time, write the comparison figure."""
    from LiverLocalizationLib.figures import denoise as denoise_figure
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(seed, size=size)
    liver = sitk.Cast(sitk.BinaryThreshold(ph.truth_tissue, 1, 4), sitk.sitkUInt8)
    results, table = {}, {"input": denoise.denoise_metrics(ph.ct, liver, ph.ct_clean)}
    for method in denoise.METHODS:
        t0 = time.perf_counter()
        results[method] = denoise.denoise(ph.ct, method)
        table[method] = denoise.denoise_metrics(results[method], liver, ph.ct_clean)
        table[method]["time_s"] = time.perf_counter() - t0
    print(f"denoising on phantom {seed} {size}: noise sd in parenchyma (HU), residual sd vs noise-free (HU), "
          "border steepness (HU/mm, noise share removed), PSNR in the liver (dB, peak 400 HU), time (s)")
    for name, m in table.items():
        print(f"  {name:<10} noise {m['noise_sd_hu']:6.1f}  residual {m['residual_sd_hu']:6.1f}  edge {m['edge_hu_per_mm']:6.1f}"
              f"  PSNR {m['psnr_db']:5.1f}  {m.get('time_s', 0.0):5.1f} s")
    denoise_figure.plot_denoise_comparison(ph.ct, results, path, table, liver_mask=liver, clean=ph.ct_clean)
    print(f"  figure: {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[100, 101, 102, 103, 104])
    parser.add_argument("--size", default="full", choices=["small", "full"])
    parser.add_argument("--method", default="curvature", choices=denoise.METHODS)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--oblique", action="store_true")
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--whole-volume", action="store_true",
                        help="denoise the whole body first and find the liver on it (the order before the liver-box speed-up)")
    parser.add_argument("--lesion-false-alarms", type=float, default=DEFAULT_FALSE_ALARMS,
                        help="as liverloc run's option")
    parser.add_argument("--json", type=Path, default=None, help="also write every case's figures to this JSON file")
    parser.add_argument("--denoise-figure", type=Path, default=None,
                        help="also compare the denoising methods on the first seed and write this PNG")
    args = parser.parse_args(argv)
    if args.denoise_figure is not None:
        compare_denoising(args.seeds[0] if args.seeds else 100, args.size, args.denoise_figure)
    head = (f"{'case':<24}{'liver':>7}{'lesion':>8}{'rec>=10':>8}{'truth':>6}{'FP':>4}{'inliv':>6}{'vessel':>8}"
            f"{'den s':>7}{'tis s':>7}  missed")
    print(head)
    print("-" * len(head), flush=True)

    def show(r: dict) -> None:
        print(f"{r['case']:<24}{r['liver_dice']:>7.3f}{r['lesion_dice']:>8.3f}{r['recall_ge10']:>8.2f}{r['n_truth']:>6}"
              f"{r['fp']:>4}{r['lesion_in_liver']:>6.2f}{r['vessel_dice']:>8.3f}{r['denoise_s']:>7.1f}{r['tissue_s']:>7.1f}"
              f"  {r['missed']}", flush=True)

    rows = []
    for seed in args.seeds:
        rows.append(evaluate_phantom(seed, args.size, args.method, args.oblique, args.flip, args.whole_volume,
                                     args.lesion_false_alarms))
        show(rows[-1])
    if not args.no_real:
        real = evaluate_real(args.method, args.whole_volume, args.lesion_false_alarms)
        if real is None:
            print(f"(real case skipped: {REAL} not found)")
        else:
            rows.append(real)
            show(real)
    ph = [r for r in rows if r["case"].startswith("phantom")]
    sets = sorted({r["seed"] // 100 for r in ph})
    if len(sets) > 1:  # one line per set of seeds (0-99, 100-199, ...), then all together
        for s in sets:
            part = [r for r in ph if r["seed"] // 100 == s]
            summary(part, f"seeds {min(r['seed'] for r in part)}-{max(r['seed'] for r in part)}")
    if ph:
        summary(ph, "phantom mean")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


def summary(ph: list[dict], title: str) -> None:
    pooled = 2.0 * sum(r["lesion_overlap"] for r in ph) / max(1, sum(r["lesion_sizes"] for r in ph))
    print(f"{title}: liver Dice {np.mean([r['liver_dice'] for r in ph]):.3f}, lesion Dice "
          f"{np.nanmean([r['lesion_dice'] for r in ph]):.3f} per case (pooled over all lesion voxels, the LiTS "
          f"'global' Dice: {pooled:.3f}), recall>=10mm {np.nanmean([r['recall_ge10'] for r in ph]):.2f} per case "
          f"({sum(r['found_ge10'] for r in ph)} of {sum(r['n_ge10'] for r in ph)} found), "
          f"FP/case {np.mean([r['fp'] for r in ph]):.2f}, lesion voxels in the liver "
          f"{np.nanmean([r['lesion_in_liver'] for r in ph]):.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
