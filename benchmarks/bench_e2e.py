"""The whole `liverloc run` on a real CT: wall time and peak memory of the process, and what each part takes.

Usage (from the repository root):
    .venv/bin/python benchmarks/bench_e2e.py [--case ../shared/data/ircadb1_1] [--repeats 1] [--no-classify]

Two measurements in one run, on the same CT:
1. `liverloc run CT --landmarks ... --out TMP` as its own process (what a user waits for): wall time and peak
   resident memory (the child's ru_maxrss), `--repeats` times, the median reported;
2. the same steps in this process, each timed: importing the package and its heavy libraries, reading the CT and
   landmarks, each pipeline stage (the pipeline's own timings), writing the files and drawing the figures as
   `liverloc run` does (together: the files in a second thread), then the writing and each figure alone.
The baseline is SimpleITK's median filter (radius 1 voxel) of the same CT measured in the same run: every figure
is also given as a multiple of it, so runs on other machines compare. Target (issue 27): the whole process
<= 20 s with figures and <= 1.5 GB on ircadb1_1 (512x512x129).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT.parent / "shared" / "data" / "ircadb1_1"


def child_run(ct: Path, landmarks: Path, out: Path, classify: bool) -> tuple[float, float]:
    """Wall seconds and peak resident memory (GB) of one `liverloc run` process (output discarded)."""
    command = [sys.executable, "-m", "LiverLocalizationLib.cli", "-q", "run", str(ct), "--landmarks", str(landmarks),
               "--out", str(out), "--overwrite"] + ([] if classify else ["--no-classify"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "LiverLocalization")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"liverloc run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    peak_kb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return seconds, peak_kb / 1024 ** 2


def timed(label: str, rows: list, fn, *args, **kwargs):
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    rows.append((label, time.perf_counter() - t0))
    return value


def in_process_parts(ct_path: Path, landmarks_path: Path, out: Path, classify: bool) -> tuple[list, float]:
    """(part, seconds) rows of the steps `liverloc run` takes, and the median filter's seconds on the same CT."""
    rows: list[tuple[str, float]] = []
    sys.path.insert(0, str(ROOT / "LiverLocalization"))
    t0 = time.perf_counter()
    import numpy  # noqa: F401
    import SimpleITK as sitk

    from LiverLocalizationLib import cli, io, pipeline  # noqa: F401
    rows.append(("import numpy, SimpleITK, the package", time.perf_counter() - t0))
    if classify:
        t0 = time.perf_counter()
        import torch  # noqa: F401
        rows.append(("import torch", time.perf_counter() - t0))
    ct = timed("read the CT", rows, io.read_image, ct_path)
    landmarks = timed("read the landmarks", rows, io.read_markups, landmarks_path)
    t0 = time.perf_counter()
    median = sitk.Median(sitk.Cast(ct, sitk.sitkFloat32), [1, 1, 1])
    median_s = time.perf_counter() - t0
    del median
    result = timed("pipeline (all stages)", rows, pipeline.run_pipeline, ct, landmarks,
                   options=pipeline.PipelineOptions(classify=classify))
    for key, seconds in result.timings.items():
        if key.endswith("_s"):
            rows.append((f"  stage {key[:-2]}", seconds))
    out.mkdir(parents=True, exist_ok=True)
    timed("write files and draw figures (`write_outputs`: files in a second thread)", rows, pipeline.write_outputs,
          result, out / "together")
    from LiverLocalizationLib.figures import classifier as classifier_figure
    from LiverLocalizationLib.figures import couinaud as couinaud_figure
    from LiverLocalizationLib.figures import overview

    timed("  alone: write images, segmentation, reports", rows, pipeline.write_outputs, result, out / "files",
          figures=False)
    timed("  alone: figure overview.png", rows, overview.plot_overview, result.ct, result.denoised,
          result.liver_mask, result.tissue, result.lesion_labels, out / "overview.png")
    if result.couinaud is not None:
        timed("  alone: figure couinaud.png", rows, couinaud_figure.plot_couinaud, result.ct, result.couinaud,
              result.landmarks, result.lesion_labels, out / "couinaud.png")
    if result.gradcam is not None and result.lesions:
        timed("  alone: figure gradcam.png", rows, classifier_figure.plot_gradcam_panels, result.ct,
              result.lesion_labels, result.gradcam, result.lesions, out / "gradcam.png")
    return rows, median_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Path, default=CASE, help="folder with ct.nii.gz and landmarks.mrk.json")
    p.add_argument("--repeats", type=int, default=1, help="whole-process runs (the median is reported)")
    p.add_argument("--no-classify", action="store_true")
    args = p.parse_args(argv)
    ct, landmarks = args.case / "ct.nii.gz", args.case / "landmarks.mrk.json"
    if not ct.exists():
        print(f"{ct} not found: nothing to measure")
        return 0
    classify = not args.no_classify
    with tempfile.TemporaryDirectory() as tmp:
        runs = [child_run(ct, landmarks, Path(tmp) / f"run{i}", classify) for i in range(args.repeats)]
        rows, median_s = in_process_parts(ct, landmarks, Path(tmp) / "parts", classify)
    wall = statistics.median(s for s, _ in runs)
    peak = max(gb for _, gb in runs)
    print(f"{args.case.name}: liverloc run{'' if classify else ' --no-classify'}, {len(runs)} run(s); "
          f"SimpleITK median (radius 1) of the same CT in this run: {median_s:.2f} s")
    print("| part | seconds | x median filter |")
    print("| --- | --- | --- |")
    print(f"| **whole process** (wall, median of {len(runs)}; peak memory {peak:.2f} GB) | **{wall:.1f}** | "
          f"{wall / median_s:.1f} |")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} | {seconds / median_s:.2f} |")
    accounted = sum(s for label, s in rows if not label.startswith("  "))
    print(f"| (parts above, indented ones not counted again) | {accounted:.1f} | {accounted / median_s:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
