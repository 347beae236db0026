"""Fast re-scoring of the lesion rules (`lesions.classify_voxels` + `extend_margins`) on cached phantom runs.

The full evaluation (`eval_tissue.py`) regenerates, denoises and segments every phantom (about a minute a
case). A change to the lesion rules only needs what `classify_voxels` receives: this script caches it once
per seed, then re-runs the rules on the cache in about 3 s a case, so a rule can be checked on many seeds.

Usage (from the repository root):
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/eval_lesion_rules.py cache --dir CACHE --seeds 0 1 2
    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/eval_lesion_rules.py score --dir CACHE --seeds 0 1 2

`cache` runs the pipeline's tissue stage (curvature denoising, liver extraction, EM, MRF) on full phantoms and
stores, cropped to the liver's box: the denoised intensities, the MRF classes and their names, the liver mask,
the true lesion labels and each lesion's kind and diameter. `score` prints per seed the lesions >= 10 mm that
were missed, the false positives (IoU >= 0.1 one-to-one matching, as `eval_tissue.py`) and the lesion Dice,
then the totals. The cache is only valid for the code that made it: re-cache after a change upstream of
`classify_voxels` (denoising, liver extraction, the mixture or the MRF).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverLocalization"))

from LiverLocalizationLib import geometry, io, lesions, metrics, pipeline  # noqa: E402


def cache_seed(seed: int, folder: Path) -> None:
    """Run the tissue stage on full phantom `seed` and store the inputs of `classify_voxels` in folder."""
    from LiverLocalizationLib.phantom import generate_phantom

    seen: dict = {}
    original = lesions.classify_voxels

    def capture(arr, classes, liver, model, spacing_xyz, **kwargs):
        seen.update(arr=np.array(arr, dtype=np.float32), classes=np.array(classes), liver=np.array(liver),
                    names=np.array(model.names), spacing_xyz=np.array(spacing_xyz, dtype=float))
        return original(arr, classes, liver, model, spacing_xyz, **kwargs)

    ph = generate_phantom(seed, size="full")
    lesions.classify_voxels = capture
    try:
        _, res, _ = pipeline.tissue_stage(io.validate_ct(ph.ct), ph.landmarks, None, pipeline.PipelineOptions())
    finally:
        lesions.classify_voxels = original
    # the crop the tissue stage worked on (on the CT stored in canonical order): the liver mask's box with its
    # 2-voxel margin
    order = geometry.storage_order(ph.ct)
    mask = sitk.GetArrayViewFromImage(geometry.to_canonical_storage(res.liver_mask, order)) > 0
    shape = seen["liver"].shape
    box = [max(0, int(np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0][0]) - 2) for ax in range(3)]
    crop = tuple(slice(b, b + s) for b, s in zip(box, shape, strict=True))
    if not np.array_equal(mask[crop], seen["liver"]):
        raise RuntimeError(f"seed {seed}: could not place the tissue stage's crop in the volume")
    truth = sitk.GetArrayViewFromImage(geometry.to_canonical_storage(ph.truth_lesions, order))[crop]
    table = [{"id": row["id"], "kind": row["kind"], "diameter_mm": row["diameter_mm"]} for row in ph.lesions]
    np.savez_compressed(folder / f"seed{seed}.npz", truth=np.array(truth), table=json.dumps(table), **seen)


def score_seed(seed: int, folder: Path, **rules) -> dict:
    """Re-run the lesion rules on a cached seed; rules: keyword arguments of `classify_voxels`."""
    d = np.load(folder / f"seed{seed}.npz")
    arr, liver, truth = d["arr"], d["liver"], d["truth"]
    model = types.SimpleNamespace(names=list(d["names"]))
    spacing_xyz = tuple(d["spacing_xyz"])
    cores, vessel = lesions.classify_voxels(arr, d["classes"], liver, model, spacing_xyz, **rules)
    grown = lesions.extend_margins(cores, arr, liver, vessel, np.asarray(spacing_xyz)[::-1],
                                   margin_mm=pipeline.PipelineOptions().lesion_margin_mm)
    grown = np.where(liver, grown, 0)
    match = metrics.match_instances(grown, truth)
    found = {b for _, b, _ in match["pairs"]}
    table = json.loads(str(d["table"]))
    big = [row for row in table if row["diameter_mm"] >= 10 and (truth == row["id"]).any()]
    return {"seed": seed, "big": len(big),
            "missed": [f"{row['kind']}:{row['diameter_mm']:.0f}mm" for row in big if row["id"] not in found],
            "fp": len(match["false_positives"]),
            "overlap": int(np.count_nonzero((grown > 0) & (truth > 0))),
            "sizes": int(np.count_nonzero(grown > 0) + np.count_nonzero(truth > 0))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["cache", "score"])
    parser.add_argument("--dir", type=Path, required=True, help="cache folder")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.action == "cache":
        for seed in args.seeds:
            cache_seed(seed, args.dir)
            print(f"cached seed {seed}", flush=True)
        return 0
    rows = []
    for seed in args.seeds:
        r = score_seed(seed, args.dir)
        rows.append(r)
        dice = 2.0 * r["overlap"] / r["sizes"] if r["sizes"] else float("nan")
        print(f"seed {seed:4d}: lesions >= 10 mm {r['big']}, missed {', '.join(r['missed']) or '-'}; "
              f"false positives {r['fp']}; lesion Dice {dice:.3f}", flush=True)
    big = sum(r["big"] for r in rows)
    missed = sum(len(r["missed"]) for r in rows)
    pooled = 2.0 * sum(r["overlap"] for r in rows) / max(1, sum(r["sizes"] for r in rows))
    print(f"total over {len(rows)} seeds: found {big - missed} of {big} lesions >= 10 mm, "
          f"{sum(r['fp'] for r in rows)} false positives, pooled lesion Dice {pooled:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
