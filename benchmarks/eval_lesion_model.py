"""Fast re-scoring of the lesion model (`lesions.detect_lesions`) on cached phantoms and on lits117.

The full evaluation (`eval_tissue.py`) regenerates, denoises and segments every phantom (about a minute a
case). A change to the lesion model only needs what `detect_lesions` receives: `cache` stores it once per seed
(the curvature-denoised crop round the liver, the true liver mask and the pipeline's extracted one, the true
lesions and their table); `score` re-runs the lesion model on the cache in a few seconds a case, with
`--set NAME=VALUE` for any field of `lesions.LesionParameters`, and also scores lits117 with its reference
liver (the real case comes first: a change must hold there).

Usage (from the repository root):
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/eval_lesion_model.py cache --dir CACHE --seeds 1000 1001
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/eval_lesion_model.py score --dir CACHE --seeds 1000 1001
        [--liver truth|extracted] [--set false_alarms=0.3]

Figures as `eval_real_tumours.py` and `eval_tissue.py` count them (`metrics.lesion_detection`): lesions of 10 mm
or more found (at least half covered), false positives (less than 10 % on a true lesion), lesion Dice pooled
over all lesion voxels. The cache is only valid for the code that made it: re-cache after a change to the
denoising, the liver extraction or the phantom.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverLocalization"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from LiverLocalizationLib import denoise, geometry, io, labels, lesions, liver, metrics, pipeline  # noqa: E402


def cache_seed(seed: int, folder: Path) -> None:
    """Store what the lesion model receives for full phantom `seed` (the pipeline's liver and the true one)."""
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(seed, size="full")
    ct = io.validate_ct(ph.ct)
    truth_liver = np.isin(sitk.GetArrayFromImage(ph.truth_tissue), labels.TRUTH_LIVER)
    extracted = sitk.GetArrayFromImage(liver.extract_liver(ct, ph.landmarks, raw=True)) > 0
    margin = np.ceil(pipeline.LIVER_BOX_MARGIN_MM / np.asarray(ct.GetSpacing())).astype(int)
    region = liver.mask_bounding_box(geometry.copy_geometry((truth_liver | extracted).astype(np.uint8), ct),
                                     margin_voxels=margin)
    den = denoise.denoise(ct, "curvature", region=region)
    (x0, y0, z0), (sx, sy, sz) = region
    crop = (slice(z0, z0 + sz), slice(y0, y0 + sy), slice(x0, x0 + sx))
    table = [{"id": r["id"], "kind": r["kind"], "diameter_mm": r["diameter_mm"]} for r in ph.lesions]
    np.savez_compressed(folder / f"seed{seed}.npz", values=sitk.GetArrayFromImage(den)[crop].astype(np.float32),
                        truth_liver=truth_liver[crop], extracted_liver=extracted[crop],
                        truth=sitk.GetArrayFromImage(ph.truth_lesions)[crop],
                        spacing_zyx=np.asarray(ct.GetSpacing())[::-1], table=json.dumps(table))


def score(found: np.ndarray, truth: np.ndarray, big_ids: list[int]) -> dict:
    match = metrics.lesion_detection(found, truth, big_ids)
    return {"found": len(match["found"]), "big": len(big_ids), "false_positives": len(match["false_positives"]),
            "overlap": int(((found > 0) & (truth > 0)).sum()), "sizes": int((found > 0).sum() + (truth > 0).sum())}


def score_seed(seed: int, folder: Path, params: lesions.LesionParameters, which: str) -> dict:
    d = np.load(folder / f"seed{seed}.npz")
    mask = d["truth_liver"] if which == "truth" else d["extracted_liver"]
    found = lesions.detect_lesions(d["values"], mask, d["spacing_zyx"], params).labels
    table = json.loads(str(d["table"]))
    big = [r["id"] for r in table if r["diameter_mm"] >= 10 and (d["truth"] == r["id"]).any()]
    return {"seed": seed, **score(found, d["truth"], big)}


def score_lits117(params: lesions.LesionParameters) -> dict | None:
    import eval_real_tumours as real

    if not (real.CASE / "ct.nii.gz").exists():
        return None
    ct = io.validate_ct(io.read_image(real.CASE / "ct.nii.gz"))
    truth = sitk.GetArrayFromImage(io.read_image(real.CASE / "mask_tumor_instances.nii.gz"))
    mask = sitk.GetArrayFromImage(io.read_image(real.CASE / "mask_liver.nii.gz")) > 0
    values = sitk.GetArrayFromImage(denoise.denoise(ct, "curvature"))
    found = lesions.detect_lesions(values, mask, np.asarray(ct.GetSpacing())[::-1], params).labels
    return score(found, truth, real.big_tumours(truth, float(np.prod(ct.GetSpacing()))))


def _parameters(settings: list[str]) -> lesions.LesionParameters:
    p = lesions.LesionParameters()
    changes = {}
    for item in settings:
        name, value = item.split("=", 1)
        changes[name] = type(getattr(p, name))(value)
    return dataclasses.replace(p, **changes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["cache", "score"])
    parser.add_argument("--dir", type=Path, required=True, help="cache folder")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--liver", choices=["truth", "extracted"], default="truth")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a LesionParameters field for this scoring")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.action == "cache":
        for seed in args.seeds:
            cache_seed(seed, args.dir)
            print(f"cached seed {seed}", flush=True)
        return 0
    params = _parameters(args.set)
    real = score_lits117(params)
    if real is not None:
        dice = 2.0 * real["overlap"] / real["sizes"]
        print(f"lits117 (reference liver): found {real['found']} of {real['big']} tumours >= 10 mm, "
              f"{real['false_positives']} false positives, tumour Dice {dice:.3f}", flush=True)
    rows = []
    for seed in args.seeds:
        r = score_seed(seed, args.dir, params, args.liver)
        rows.append(r)
        print(f"seed {seed}: found {r['found']} of {r['big']}, {r['false_positives']} false positives, lesion Dice "
              f"{2.0 * r['overlap'] / max(1, r['sizes']):.3f}", flush=True)
    pooled = 2.0 * sum(r["overlap"] for r in rows) / max(1, sum(r["sizes"] for r in rows))
    print(f"phantoms ({args.liver} liver): found {sum(r['found'] for r in rows)} of {sum(r['big'] for r in rows)}, "
          f"{sum(r['false_positives'] for r in rows)} false positives ({sum(r['false_positives'] for r in rows) / len(rows):.2f} "
          f"a case), pooled lesion Dice {pooled:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
