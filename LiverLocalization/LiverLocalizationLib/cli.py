"""The ``liverloc`` command: phantom generation, the pipeline, classifier training and evaluation.

Errors in the user's input are printed as one clear line (no traceback) with exit status 2: option values at
parse time (finite numbers in range), paths before any work (inputs exist, --out is a writable folder holding
no input, `phantom --out` replaces only the phantom's own files, --truth is a phantom folder). `run` and
`evaluate-classifier` write their results whole or not at all, with a manifest and a lock (see outputs.py).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import __version__, outputs
from .errors import InputError

DESCRIPTION = """\
LiverLocalization: find liver tumours on CT and tell in which Couinaud segment(s) they lie.

Stages of `liverloc run`: denoising (median or edge-preserving), EM tissue segmentation
(liver parenchyma, lesions, vessels), Couinaud segments I-VIII (or nine, with IVa/IVb) from
vessel landmarks, CNN classification of each lesion with Grad-CAM. Results keep the CT's geometry
exactly.
"""

EPILOG = """\
examples:
  liverloc phantom --out case --seed 7 --size full
  liverloc run case/ct.nii.gz --landmarks case/landmarks.mrk.json --out result
  liverloc run ct_dicom_folder/ --landmarks clicks.mrk.json --liver-mask liver.nii.gz --out result
  liverloc run two_series_folder/ --series 1.2.840.113619.2.55.3.1234 --landmarks clicks.mrk.json --out result
  liverloc run ct.nii.gz --landmarks clicks.mrk.json --liver-mask total.nii.gz --liver-label 5 --out result
  liverloc run ct.nii.gz --landmarks clicks.mrk.json --segments 9 --out result
  liverloc batch cases.csv --out cohort --workers 2
  liverloc train --out model --cases 150 --epochs 40 --seed 0
  liverloc evaluate-classifier --weights model/lesion_classifier.safetensors --out evaluation
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the problem, then where the options are described), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}. See '{self.prog} --help'.\n")


def bounded(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite int or float within [low, high] (low excluded when low_open), so that a bad
    value (nan, inf, a negative count) stops the command at parse time, before any work, with exit status 2."""
    noun = "an integer" if kind is int else "a finite number"
    if low is not None and high is not None:
        where = f"{noun} from {low:g}{' (excluded)' if low_open else ''} to {high:g}"
    elif low is not None:
        where = f"{noun} {'>' if low_open else '>='} {low:g}"
    else:
        where = noun

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}; use {where}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not finite; use {where}")
        if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; use {where}")
        return value

    parse.__name__ = kind.__name__
    return parse


def out_folder_problem(out: Path, option: str = "--out") -> str | None:
    """Why results cannot be written into the folder `out` (None when they can), found before any work: it is a
    file, lies under a file, or the folder (or its nearest existing parent, where it would be created) is not
    writable. Nothing is created. `option`: how the message names the folder."""
    if out.exists():
        if not out.is_dir():
            return f"{option} {out} is a file; name a folder (it is created when missing)"
        existing = out
    else:
        existing = next(p for p in out.absolute().parents if p.exists())
        if not existing.is_dir():
            return f"{option} {out} lies under {existing}, which is a file; name a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {out}: {existing} is not writable; choose a folder you can write to"
    return None


def input_in_out_problem(out: Path, inputs: dict[str, Path | None]) -> str | None:
    """Why an input (option → path) may not be used with this --out folder (None when all may): it is the folder or
    lies in it, where results could replace it or be mixed with it."""
    target = out.resolve()
    for option, path in inputs.items():
        if path is not None and (path.resolve() == target or target in path.resolve().parents):
            return (f"{option} {path} lies in the --out folder {out}: results written there could replace it. "
                    "Choose another --out folder")
    return None


def options_record(args) -> dict:
    """The command's options as run.json records them: every parsed option, paths as text."""
    skip = {"func", "command", "quiet"}
    return {key: str(value) if isinstance(value, Path) else value
            for key, value in sorted(vars(args).items()) if key not in skip}


def weights_used(weights: Path | None) -> Path | None:
    """The classifier weights a command reads: those given, else the shipped model (recorded in run.json as an
    input like any other, so that a result names the model it came from)."""
    from .classifier import DEFAULT_WEIGHTS

    return weights if weights is not None else (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None)


def _add_out(p, what: str) -> None:
    """--out and --overwrite of the commands whose results are written whole (run, evaluate-classifier)."""
    p.add_argument("--out", required=True, type=Path,
                   help=f"output folder ({what}). Results are written into a hidden folder beside it and moved into "
                        "place only when complete, with run.json: the inputs with their SHA-256, the options, the "
                        "version, the dates and every file written with its size and SHA-256; a failed or "
                        "interrupted command leaves --out as it was. A folder holding an earlier command's results "
                        "is refused unless --overwrite; one holding files liverloc did not write is never replaced. "
                        "One command at a time per folder (lock file .NAME.lock beside it). Checked before any "
                        "work: it must be a folder you can write to and hold none of the inputs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier liverloc command in --out as a whole (none of its files "
                        "remain); only once the new set is complete")


def _check_input_paths(usable: dict[str, Path | None], exist: dict[str, Path | None]) -> None:
    """Raise InputError for a path the image library cannot use (`io.path_problem`), among `usable`, then for one of
    `exist` that does not exist (option → path; None: not given)."""
    from . import io

    for option, path in usable.items():
        problem = io.path_problem(path, option) if path is not None else None
        if problem:
            raise InputError(problem + ".")
    for option, path in exist.items():
        if path is not None and not path.exists():
            raise InputError(f"{option} {path}: no such file or folder. Check the path.")


def _check_paths(out: Path, inputs: dict[str, Path | None]) -> None:
    """Raise InputError, before any work, for an input that does not exist or lies in --out, an --out folder
    results cannot be written into, or a path the image library cannot use (`io.path_problem`)."""
    _check_input_paths({**inputs, "--out": out}, exist=inputs)
    problem = out_folder_problem(out) or input_in_out_problem(out, inputs)
    if problem:
        raise InputError(problem + ".")


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[float, str], None]]:
    """A progress callback (fraction 0..1, message): a tqdm bar on stderr when it is a terminal; otherwise (make,
    logs, CI, where a redrawn bar is carriage-return noise) one line each time the message changes."""
    if not enabled:
        yield lambda fraction, message: None
        return
    if not sys.stderr.isatty():
        yield _progress_lines(description, sys.stderr)
        return
    from tqdm import tqdm

    with tqdm(total=100, desc=description, unit="%", leave=True, file=sys.stderr,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}") as bar:

        def update(fraction: float, message: str) -> None:
            target = int(round(max(0.0, min(1.0, fraction)) * 100))
            if target > bar.n:
                bar.update(target - bar.n)
            bar.set_postfix_str(message, refresh=True)

        yield update


def _progress_lines(description: str, stream) -> Callable[[float, str], None]:
    """A progress callback writing `description: NN% message (elapsed s)` to `stream` when the message changes."""
    start = time.perf_counter()
    last = [None]

    def update(fraction: float, message: str) -> None:
        if message == last[0]:
            return
        last[0] = message
        percent = round(max(0.0, min(1.0, fraction)) * 100)
        stream.write(f"{description}: {percent:3d}% {message} ({time.perf_counter() - start:.1f} s)\n")
        stream.flush()

    return update


def _add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="generate a synthetic liver CT phantom with ground truth",
                       description="Generate a synthetic portal-venous liver CT with ground truth (tissues, "
                                   "Couinaud segments, lesions, landmarks). Deterministic by seed.")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (created). The phantom's files (ct.nii.gz, truth_*.nii.gz, truth.json, "
                        "landmarks.mrk.json) replace files of those names only when they are an earlier phantom's "
                        "own, unchanged: truth.json records each file's SHA-256. Any other such file (e.g. your own "
                        "ct.nii.gz) stops the command before any work; other files are never touched")
    p.add_argument("--seed", type=bounded(int, 0), default=0, help="random seed, an integer >= 0 (default 0)")
    p.add_argument("--size", choices=("small", "full"), default="small",
                   help="small: ~2 mm voxels (fast); full: 512x512 in-plane, ~0.7 mm x 1.5-2.5 mm slices")
    p.add_argument("--oblique", action="store_true", help="store the volume with a rotated direction matrix")
    p.add_argument("--flip", action="store_true", help="store the volume with flipped axes (e.g. RAS-ordered NIfTI)")
    p.add_argument("--lesions", type=bounded(int, 0, 12), default=None,
                   help="number of lesions, 0-12 (default: 0-6 by seed)")
    p.set_defaults(func=_cmd_phantom)


def _cmd_phantom(args) -> int:
    from .phantom import files_not_written_by_phantom, generate_phantom, write_phantom

    _check_paths(args.out, {})
    foreign = files_not_written_by_phantom(args.out)
    if foreign:
        raise InputError(f"{args.out} holds {', '.join(foreign)}, not written by liverloc phantom (or changed since); "
                         "they are not replaced. Choose another --out folder, or move those files away.")
    with progress_bar("phantom", not args.quiet) as progress:
        phantom = generate_phantom(seed=args.seed, size=args.size, oblique=args.oblique, flip=args.flip,
                                   n_lesions=args.lesions, progress=progress)
    paths = write_phantom(phantom, args.out)
    print(f"Phantom seed {args.seed} ({args.size}): liver {phantom.liver_volume_ml:.0f} ml, "
          f"{len(phantom.lesions)} lesion(s), CT {phantom.ct.GetSize()} at "
          f"{tuple(round(s, 2) for s in phantom.ct.GetSpacing())} mm")
    for lesion in phantom.lesions:
        print(f"  lesion {lesion['id']}: {lesion['kind']}, {lesion['diameter_mm']:.0f} mm, segment {lesion['main_segment']}")
    print(f"Written to {Path(args.out).resolve()}: " + ", ".join(sorted(p.name for p in paths.values())))
    return 0


def _add_run(sub) -> None:
    from .labels import SEGMENT_COUNTS
    from .pipeline import COUINAUD_METHODS, PipelineOptions

    defaults = PipelineOptions()
    p = sub.add_parser("run", help="run the pipeline on a CT",
                       description="Denoise, segment liver/lesions/vessels by EM, map Couinaud segments from the "
                                   "landmarks, classify each lesion; write images, a Slicer .seg.nrrd, reports and figures "
                                   "(and, for a DICOM folder, a DICOM SEG, segmentation.dcm, that references its series).")
    p.add_argument("ct", type=Path, help="CT volume: .nii/.nii.gz/.nrrd/.mha file or a DICOM series folder (HU). A "
                                         "folder's slices are checked from their headers before reading: one "
                                         "orientation, no slice twice, an even step (no slice missing), no gantry tilt")
    p.add_argument("--series", metavar="UID", default=None,
                   help="with a DICOM folder holding several series: the SeriesInstanceUID of the one to read (without "
                        "it such a folder is refused with a list of its series: UID, slices, modality, description)")
    p.add_argument("--landmarks", type=Path, help="Slicer markups .mrk.json (or .fcsv) with IVC, IVC_inferior, RHV, MHV, "
                                                   "LHV, RPV, LPV, UP; LPS or RAS as the file states; or 'auto': "
                                                   "proposed from the CT (`liverloc landmarks`), the report says which")
    p.add_argument("--liver-mask", type=Path, help="a liver mask on the CT's grid (e.g. from TotalSegmentator); "
                                                   "nonzero = liver. Replaces the EM liver extraction")
    p.add_argument("--liver-label", type=bounded(float), default=None,
                   help="with a multi-label --liver-mask: the liver's label (5 in TotalSegmentator's multi-label "
                        "output); without it the mask must hold one nonzero value")
    _add_out(p, "created when missing")
    p.add_argument("--denoise", choices=("median", "curvature", "bilateral", "none"), default=defaults.denoise_method,
                   help=f"denoising method (default {defaults.denoise_method})")
    p.add_argument("--denoise-whole-volume", action="store_true",
                   help="denoise the whole body, then find the liver on the denoised CT (slower). By default the "
                        "liver is found first and only its bounding box (+10 mm) is denoised; denoised.nii.gz (whole HU) is "
                        "the input outside that box")
    p.add_argument("--median-radius-mm", type=bounded(float, 0, 10, low_open=True), default=defaults.median_radius_mm,
                   help=f"median filter radius in mm, over 0 and up to 10 (default {defaults.median_radius_mm})")
    p.add_argument("--classes", type=bounded(int, 2, 8), default=None,
                   help="number of EM intensity classes, 2-8 (default: chosen by BIC)")
    p.add_argument("--min-lesion-mm3", type=bounded(float, 0), default=defaults.min_lesion_volume_mm3,
                   help=f"smallest lesion kept, mm³, >= 0 (default {defaults.min_lesion_volume_mm3:g})")
    p.add_argument("--lesion-false-alarms", type=bounded(float, 0, 10), default=defaults.lesion_false_alarms,
                   help="lesion sensitivity, 0-10: the number of chance detections expected in a liver from its noise and "
                        "regional variation (each size's contrast is judged against the liver's own; default "
                        f"{defaults.lesion_false_alarms:g}); raise it to find fainter lesions, lower it for fewer false ones")
    p.add_argument("--lesion-seeds", type=Path, default=None,
                   help="a markups file (.mrk.json or .fcsv) of points clicked inside lesions that the automatic "
                        "detection may miss: each gives that lesion's segmentation, measurements and segment; a point "
                        "inside a detected lesion leaves it as it is")
    p.add_argument("--couinaud-method", choices=COUINAUD_METHODS, default=defaults.couinaud_method,
                   help="Couinaud mapping: planes (landmark planes); territories (portal-territory refinement near "
                        "borders); vessels (sector borders bent along the segmented hepatic veins, superior/inferior "
                        "heights from the portal branches); auto (default: vessels when the vessel mask shows all "
                        "three hepatic veins and the portal branches of every sector, else planes)")
    p.add_argument("--segments", type=int, choices=SEGMENT_COUNTS, default=defaults.couinaud_segments,
                   help="Couinaud segments: 8 (I-VIII, default) or 9 (I, II, III, IVa, IVb, V-VIII, as hepatic "
                        "surgery plans them: IV split at the left portal plane, the height that splits II from III, "
                        "into IVa above and IVb below; couinaud.nii.gz then holds IVa as 4 and IVb as 9, and the report and the "
                        "segmentation name IVa/IVb)")
    p.add_argument("--no-classify", action="store_true", help="skip the CNN lesion classification")
    p.add_argument("--weights", type=Path, default=None, help="classifier weights (.safetensors); default: the shipped model")
    p.add_argument("--truth", type=Path, default=None,
                   help="a phantom folder written by liverloc phantom: also score the result against its ground "
                        "truth. Checked before any work (truth.json, truth_*.nii.gz, the CT's geometry)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=_cmd_run)


def _landmarks_file(args) -> Path | None:
    """The --landmarks file, None when not given or 'auto' (proposed from the CT)."""
    return None if args.landmarks is None or str(args.landmarks) == "auto" else args.landmarks


def run_inputs(args) -> dict[str, Path | None]:
    """The inputs `liverloc run` reads with these options (option → path; None where not given), as run.json
    records them: the classifier weights only when classifying, the shipped model when none are given."""
    return {"CT": args.ct, "--landmarks": _landmarks_file(args), "--liver-mask": args.liver_mask,
            "--lesion-seeds": args.lesion_seeds, "--weights": None if args.no_classify else weights_used(args.weights),
            "--truth": args.truth}


def run_command(args) -> tuple[list[str], outputs.Results]:
    """`liverloc run`'s work without its printing, shared with `liverloc batch` (one call per case): check the
    options and paths before any work (InputError), run the pipeline and write the results whole into args.out
    with run.json. Returns the summary lines and where the results are."""
    from .phantom import phantom_folder_problem

    inputs = {"CT": args.ct, "--landmarks": _landmarks_file(args), "--liver-mask": args.liver_mask,
              "--lesion-seeds": args.lesion_seeds, "--weights": args.weights, "--truth": args.truth}
    _check_paths(args.out, inputs)
    truth_problem = phantom_folder_problem(args.truth) if args.truth else None
    if truth_problem:
        raise InputError(f"--truth: {truth_problem}. Give the folder written by liverloc phantom for this CT, or "
                         "leave --truth out.")
    if args.liver_label is not None and args.liver_mask is None:
        raise InputError("--liver-label names a label of --liver-mask: give the mask too.")
    if args.series is not None and not args.ct.is_dir():
        raise InputError(f"--series picks a series in a DICOM folder; {args.ct} is a file. Leave --series out, or "
                         "give the folder.")
    with outputs.atomic_results(args.out, "liverloc run", run_inputs(args), options_record(args),
                                args.overwrite) as results:
        lines = _run_into(args, results.folder)
    return lines, results


def _cmd_run(args) -> int:
    lines, results = run_command(args)
    print("\n".join(lines))
    print(f"Outputs in {results.target}:")
    for name in sorted([*results.files, outputs.MANIFEST]):
        print(f"  {name}")
    return 0


def _run_into(args, folder: Path) -> list[str]:
    """Read the inputs, run the pipeline and write its results (and --truth's scores) into `folder`; returns the
    summary lines, printed once the results are in place."""
    from . import geometry, io, pipeline

    options = pipeline.PipelineOptions(
        denoise_method=args.denoise, median_radius_mm=args.median_radius_mm, n_classes=args.classes,
        min_lesion_volume_mm3=args.min_lesion_mm3, lesion_false_alarms=args.lesion_false_alarms,
        couinaud_method=args.couinaud_method, couinaud_segments=args.segments,
        lesion_points=io.read_lesion_points(args.lesion_seeds) if args.lesion_seeds else None,
        classify=not args.no_classify, weights_path=str(args.weights) if args.weights else None,
        denoise_whole_volume=args.denoise_whole_volume,
    )
    ct = io.read_image(args.ct, series_uid=args.series)
    pipeline.check_memory(ct)
    ct = io.validate_ct(ct)  # the CT in float32 from here on: the pipeline then holds one copy of it, not two
    landmarks = io.read_markups(args.landmarks) if _landmarks_file(args) else None
    if _landmarks_file(args) and not landmarks:  # a given file without points would silently skip the segments
        raise InputError(f"--landmarks {args.landmarks}: the file holds no placed point; place the vessel landmarks "
                         "(IVC, IVC_inferior, RHV, MHV, LHV, RPV, LPV, UP) and save it again, or leave --landmarks "
                         "out to run without Couinaud segments.")
    liver_mask = io.read_image(args.liver_mask) if args.liver_mask else None
    if args.liver_label is not None:
        liver_mask = pipeline.select_liver_label(liver_mask, args.liver_label)
    proposed = None
    if args.landmarks is not None and str(args.landmarks) == "auto":
        from .landmarks import propose_landmarks, write_proposed_markups

        proposed = propose_landmarks(ct, liver_mask)
        landmarks = dict(proposed.points) or None
        if proposed.points:
            write_proposed_markups(folder / "proposed_landmarks.mrk.json", proposed)
    if args.truth:
        geometry.require_same_geometry(io.read_image(Path(args.truth) / "truth_couinaud.nii.gz"), ct,
                                       f"The phantom's truth in {args.truth}")
    with progress_bar("liverloc run", not args.quiet) as progress:
        result = pipeline.run_pipeline(ct, landmarks, liver_mask, options, progress=progress,
                                       proposed_landmarks=proposed)
        if args.ct.is_dir():  # a DICOM series: the segmentation also as a DICOM SEG referencing it
            from . import dicomseg

            dicomseg.write_run_seg(folder, result, args.ct, args.series)
        pipeline.write_outputs(result, folder, figures=not args.no_figures, progress=progress)
    lines = [pipeline.summary_text(result)]
    if args.truth:
        scores = pipeline.score_against_phantom(result, args.truth)
        pipeline.write_json(scores, folder / "evaluation.json")
        lines.append(pipeline.scores_text(scores))
    return lines


def _add_landmarks(sub) -> None:
    p = sub.add_parser("landmarks", help="propose the vessel landmarks from a CT (to confirm or move in Slicer)",
                       description="Propose IVC, IVC_inferior, RHV, MHV, LHV, RPV, LPV and UP from a portal-venous CT; "
                                   "each point's description holds its confidence (0-1) and "
                                   "why it was placed there. Landmarks not found are listed with the reason and left "
                                   "out of the file.")
    p.add_argument("ct", type=Path, help="CT volume (.nii/.nii.gz/.nrrd/.mha file or a DICOM series folder, HU)")
    p.add_argument("--liver-mask", type=Path, help="a liver mask on the CT's grid (nonzero = liver); without it the "
                                                   "liver is found without seeds (slower, less reliable)")
    p.add_argument("--out", required=True, type=Path, help="the markups file to write (.mrk.json, LPS)")
    p.set_defaults(func=_cmd_landmarks)


def _cmd_landmarks(args) -> int:
    from . import io
    from .landmarks import propose_landmarks, write_proposed_markups

    if not str(args.out).endswith(".mrk.json"):
        raise InputError(f"--out {args.out}: name a .mrk.json file (a Slicer markups file).")
    inputs = {"CT": args.ct, "--liver-mask": args.liver_mask}
    _check_input_paths(inputs, exist=inputs)
    problem = out_folder_problem(args.out.parent if str(args.out.parent) else Path("."), "the folder of --out")
    if problem:
        raise InputError(problem + ".")
    ct = io.read_image(args.ct)
    mask = io.read_image(args.liver_mask) if args.liver_mask else None
    if mask is not None:
        from . import geometry

        geometry.require_same_geometry(mask, ct, f"--liver-mask {args.liver_mask}")
    with progress_bar("liverloc landmarks", not args.quiet) as progress:
        proposed = propose_landmarks(ct, mask, progress=progress)
    if not proposed.points:
        raise InputError("no landmark found: " + "; ".join(f"{k}: {v}" for k, v in proposed.missing.items()))
    write_proposed_markups(args.out, proposed)
    print("\n".join(proposed.summary_lines()))
    print(f"Written {len(proposed.points)} landmark(s) to {args.out.resolve()}; check and move them in Slicer.")
    return 0


def _add_batch(sub) -> None:
    p = sub.add_parser(
        "batch", help="run the pipeline on a cohort of CTs listed in a CSV, on a Dask cluster",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run `liverloc run` on every case of a CSV, each in a Dask worker process, into OUT/<case>/.

cases.csv: a header naming the columns `case` (an id, also the folder name under --out: letters, digits, '.',
'_', '-'), `ct` (a .nii/.nii.gz/.nrrd/.mha file or a DICOM series folder) and optionally `landmarks` (.mrk.json or
.fcsv) and `liver_mask`; an empty cell leaves that input out. Relative paths are taken from the CSV's folder.
The CSV is checked before any work: a missing column, an unusable or repeated case id, a missing file or an input
inside --out stops the command with one line per problem naming its row (exit status 2).

Each case is written as `liverloc run` writes it (whole or not at all, with run.json: the inputs' SHA-256, the
options, every file). A failed case is recorded with its one-line error and never stops the others. Run the same
command again to resume: a case whose run.json exists with the same input checksums and options is skipped; the
others (failed, interrupted, or whose inputs changed) are run again and replace what was there.

Progress: one line per finished case (a bar over the cases on a terminal). At the end, OUT/cases.csv (case,
status ok/failed/skipped, error, liver_ml, segment_<name>_ml per Couinaud segment, n_lesions, seconds,
worker: the Dask worker's address) and OUT/lesions.csv (case, lesion, volume_ml, max_diameter_mm,
axial_diameter_mm, equivalent_diameter_mm, main_segment, segments, kind, malignant_probability), read from each
case's report.json.
Exit status: 0 when every case is ok or skipped, 1 when any failed, 2 for a bad CSV or option.

Needs Dask: pip install 'liverlocalization[batch]'.""",
        epilog="""\
examples:
  liverloc batch cases.csv --out cohort --workers 4 --memory-limit 6
  liverloc batch cases.csv --out cohort --scheduler tcp://10.0.0.5:8786""")
    p.add_argument("cases", type=Path, help="the CSV of cases (columns case, ct[, landmarks, liver_mask])")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (created when missing): OUT/<case>/ per case, OUT/cases.csv, OUT/lesions.csv. "
                        "One batch at a time per folder (lock file .NAME.lock beside it)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on an existing Dask distributed cluster (e.g. tcp://host:8786) instead of a local one; "
                        "its workers need liverlocalization installed and the same paths to the inputs and --out")
    p.add_argument("--workers", type=bounded(int, 1), default=2,
                   help="local cluster: worker processes, one case each at a time (one thread each; default 2)")
    p.add_argument("--memory-limit", metavar="GB", type=bounded(float, 0, low_open=True), default=None,
                   help="local cluster: memory limit of each worker in GB (10^9 bytes); a worker over it is restarted "
                        "and its case recorded as failed (default: Dask's share of the machine's memory)")
    p.add_argument("--no-classify", action="store_true", help="skip the CNN lesion classification")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=_cmd_batch)


def _cmd_batch(args) -> int:
    from .batch import run_batch

    with progress_bar("liverloc batch", not args.quiet) as progress:
        outcomes = run_batch(args.cases, args.out, scheduler=args.scheduler, workers=args.workers,
                             memory_limit_gb=args.memory_limit, classify=not args.no_classify,
                             figures=not args.no_figures, progress=progress)
    counts = {status: sum(o["status"] == status for o in outcomes.values()) for status in ("ok", "skipped", "failed")}
    print(f"{len(outcomes)} case(s): {counts['ok']} ok, {counts['skipped']} skipped (up to date), "
          f"{counts['failed']} failed")
    for case, outcome in outcomes.items():
        if outcome["status"] == "failed":
            print(f"  {case}: {outcome['error']}")
    print(f"Tables: {(args.out / 'cases.csv').resolve()}, {(args.out / 'lesions.csv').resolve()}")
    return 1 if counts["failed"] else 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the lesion classifier on phantom cases (split by case)",
                       description="Generate phantom cases, extract detected lesions, split by case, train the CNN with "
                                   "augmentation; write safetensors weights, a JSON model card and figures.")
    p.add_argument("--out", required=True, type=Path, help="output folder for weights, model card and figures")
    p.add_argument("--cases", type=bounded(int, 3), default=150,
                   help="number of phantom cases, >= 3 (default 150, as the shipped model)")
    p.add_argument("--epochs", type=bounded(int, 1), default=40, help="training epochs, >= 1 (default 40, as the shipped model)")
    p.add_argument("--seed", type=bounded(int, 0), default=0,
                   help="random seed of cases, split and initialisation, >= 0 (default 0)")
    p.add_argument("--detector", choices=["training", "pipeline"], default="training",
                   help="lesion detector whose masks the patches are cut with: 'training' (default: median denoising of "
                        "the whole CT, as the shipped model) or 'pipeline' (liverloc run's tissue stage)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .classifier_training import train

    _check_paths(args.out, {})
    with progress_bar("train", not args.quiet) as progress:
        card = train(args.out, n_cases=args.cases, epochs=args.epochs, seed=args.seed, progress=progress,
                     detector=args.detector)
    metrics = card.get("metrics", {})
    for key, what in (("test_true_masks", "all lesions, true masks"), ("test", "detected lesions")):
        if metrics.get(key):
            print(f"Held-out cases ({what}): " + ", ".join(
                f"{k} {v:.3f}" for k, v in metrics[key].items() if isinstance(v, (int, float))))
    print(f"Weights and model card in {Path(args.out).resolve()}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate-classifier", help="evaluate classifier weights on phantom cases never used in training",
                       description="Confusion matrix, accuracy, sensitivity, specificity, precision, F1 and ROC AUC with "
                                   "95 % bootstrap confidence intervals (resampled by case), per kind and malignant vs benign.")
    p.add_argument("--weights", type=Path, default=None, help="weights (.safetensors); default: the shipped model")
    _add_out(p, "evaluation.json, confusion_matrix.png")
    p.add_argument("--cases", type=bounded(int, 1), default=40, help="number of evaluation cases, >= 1 (default 40)")
    p.add_argument("--first-seed", type=bounded(int, 0), default=None,
                   help="first phantom seed (default: the first seed after the model card's training and test seeds)")
    p.add_argument("--detector", choices=["pipeline", "training"], default="pipeline",
                   help="lesion detector whose lesions are classified: 'pipeline' (default: liverloc run's tissue stage, "
                        "curvature denoising of the liver's box) or 'training' (median denoising of the whole CT, as "
                        "the shipped weights were trained)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from .classifier import load_model
    from .classifier_training import evaluate, evaluation_seeds

    _check_paths(args.out, {"--weights": args.weights})
    load_model(args.weights)  # the weights and their card checked first: a bad file is named as such, not as seeds
    seeds = evaluation_seeds(args.weights, args.cases, args.first_seed)
    with outputs.atomic_results(args.out, "liverloc evaluate-classifier", {"--weights": weights_used(args.weights)},
                                options_record(args), args.overwrite) as results:
        with progress_bar("evaluate", not args.quiet) as progress:
            report = evaluate(args.weights, seeds, results.folder, progress=progress, detector=args.detector)
    print(report.get("summary", ""))
    print(f"Evaluation in {results.target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="liverloc", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_phantom(sub)
    _add_run(sub)
    _add_landmarks(sub)
    _add_batch(sub)
    _add_train(sub)
    _add_evaluate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"liverloc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("liverloc: interrupted", file=sys.stderr)
        return 130


def console_main() -> None:
    """The `liverloc` command: `main`, then the process ends without the interpreter's teardown. When `main`
    returns every result is written, closed and moved into place, and the streams are flushed here; the teardown
    would only free memory and unload libraries, and after `import torch` it alone takes half a second (0.46 s on
    a 2-core machine, a fortieth of a whole run)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
