"""The pipeline: denoise → EM tissues → Couinaud segments → lesion classification, and its outputs.

`run_pipeline` works in memory on SimpleITK images (used by the CLI and by the Slicer module's
logic); `write_outputs` writes the result folder; `result_segments` is the one place that names,
colours and codes the result segments for both the `.seg.nrrd` file and Slicer's segmentation node.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import dependencies, geometry, io, labels
from .couinaud import METHODS as COUINAUD_METHODS
from .errors import InputError

Progress = Callable[[float, str], None]

DENOISE_METHODS = ("median", "curvature", "bilateral", "none")


class Cancelled(Exception):
    """Raised between stages when the caller's should_cancel() returns True."""


@dataclass
class PipelineOptions:
    """Settings of one run (units in the names)."""

    denoise_method: str = "curvature"
    median_radius_mm: float = 1.0
    n_classes: int | None = None
    min_lesion_volume_mm3: float = 100.0
    lesion_false_alarms: float = 0.1
    lesion_points: dict[str, np.ndarray] | None = None
    couinaud_method: str = "auto"
    couinaud_segments: int = 8  # 8 (I-VIII) or 9 (IV split into IVa and IVb at the left portal plane)
    classify: bool = True
    weights_path: str | None = None
    denoise_whole_volume: bool = False

    def validate(self) -> None:
        if self.denoise_method not in DENOISE_METHODS:
            raise InputError(f"Unknown denoising method {self.denoise_method!r}; choose one of {', '.join(DENOISE_METHODS)}.")
        if self.couinaud_method not in COUINAUD_METHODS:
            raise InputError(f"Unknown Couinaud method {self.couinaud_method!r}; choose one of {', '.join(COUINAUD_METHODS)}.")
        labels.check_segment_count(self.couinaud_segments)
        if not 0 < self.median_radius_mm <= 10:
            raise InputError(f"Median radius {self.median_radius_mm} mm is out of range; use 0.5-10 mm (1 mm is typical).")
        if self.n_classes is not None and not 2 <= self.n_classes <= 8:
            raise InputError(f"{self.n_classes} EM classes: use 2-8, or leave it unset to choose by BIC.")
        self.lesion_parameters().validate()
        for name, point in (self.lesion_points or {}).items():
            if np.asarray(point, dtype=float).shape != (3,) or not np.all(np.isfinite(np.asarray(point, dtype=float))):
                raise InputError(f"Lesion point {name!r} is not a 3-D point in mm ({point!r}).")

    def lesion_parameters(self):
        """The lesion model's settings (`lesions.LesionParameters`) with this run's options."""
        from .lesions import LesionParameters

        return LesionParameters(min_volume_mm3=float(self.min_lesion_volume_mm3),
                                false_alarms=float(self.lesion_false_alarms))


@dataclass
class PipelineResult:
    """Everything one run produced; every image has the CT's geometry."""

    ct: sitk.Image
    denoised: sitk.Image
    liver_mask: sitk.Image
    tissue: sitk.Image
    lesion_labels: sitk.Image
    vessel_mask: sitk.Image
    couinaud: sitk.Image | None
    gradcam: sitk.Image | None
    lesions: list[dict]
    em_classes: list[dict]
    landmarks: dict[str, np.ndarray] | None
    options: PipelineOptions
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    couinaud_method: str | None = None
    couinaud_volumes_ml: dict[str, float] | None = None
    couinaud_vessel_guidance: dict | None = None
    couinaud_segments: int = 8  # the segments of `couinaud` (8, or 9: 4 = IVa, 9 = IVb)
    proposed_landmarks: dict | None = None  # with landmarks proposed from the CT: label → confidence, reason or missing


def _stage_progress(progress: Progress | None, start: float, stop: float) -> Progress:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(start + (stop - start) * max(0.0, min(1.0, fraction)), message)

    return report


def _check_cancel(should_cancel: Callable[[], bool] | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("Cancelled by the user; no results were written.")


TOTALSEGMENTATOR_LIVER_LABEL = 5  # the liver in TotalSegmentator's multi-label output (task 'total')


def _label_list(values: np.ndarray, most: int = 8) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:most])
    return shown + (f", … ({len(values)} in all)" if len(values) > most else "")


def select_liver_label(mask: sitk.Image, label: float) -> sitk.Image:
    """The voxels of `mask` equal to `label` (uint8 0/1, same geometry): the liver of a multi-label segmentation.

    Raises InputError naming the labels present when `label` is not one of them."""
    arr = sitk.GetArrayViewFromImage(mask)
    if not np.any(arr == label):
        present = np.unique(arr[arr != 0])
        raise InputError(f"The liver mask holds no voxel of label {label:g}; its labels are "
                         f"{_label_list(present) if present.size else 'none (it is empty)'}. Name the liver's label.")
    return geometry.copy_geometry((arr == label).astype(np.uint8), mask)


def _binary_liver_mask(liver_mask: sitk.Image, ct: sitk.Image) -> sitk.Image:
    """The given liver mask as uint8 0/1 after its checks: the CT's geometry, not empty, one nonzero value (a
    multi-label segmentation such as TotalSegmentator's would otherwise make every organ liver)."""
    geometry.require_same_geometry(liver_mask, ct, "The liver mask")
    arr = sitk.GetArrayViewFromImage(liver_mask)
    nonzero = arr[arr != 0]
    if nonzero.size and nonzero.min() != nonzero.max():
        present = np.unique(nonzero)
        raise InputError(
            f"The liver mask holds {len(present)} different nonzero values ({_label_list(present)}): it is a "
            "multi-label segmentation or not a mask. Give the liver alone, or name the liver's label (command line: "
            f"--liver-label N; {TOTALSEGMENTATOR_LIVER_LABEL} in TotalSegmentator's multi-label output).")
    if not nonzero.size:
        raise InputError("The liver mask is empty; give a mask with the liver set to nonzero, or run without it.")
    check_liver_mask_extent(int(nonzero.size), arr.size, float(np.prod(ct.GetSpacing())))
    return sitk.Cast(sitk.NotEqual(liver_mask, 0), sitk.sitkUInt8)


# A liver fills well under half of even its own bounding box (an ellipsoid fills 52 %; the ircadb and LiTS crops
# here 19-29 %), and the largest livers (massive hepatomegaly) stay under about 6 l (normal 1.2-2 l): a mask beyond
# either is inverted, a body mask or the whole image, and would give a silently wrong "liver".
MAX_LIVER_MASK_FRACTION = 0.5
MAX_LIVER_VOLUME_ML = 6000.0


def check_liver_mask_extent(liver_voxels: int, image_voxels: int, voxel_mm3: float) -> None:
    """Raise InputError when a given liver mask covers most of the image or a volume no liver has."""
    fraction, ml = liver_voxels / max(image_voxels, 1), liver_voxels * voxel_mm3 / 1000.0
    if fraction > MAX_LIVER_MASK_FRACTION or ml > MAX_LIVER_VOLUME_ML:
        raise InputError(
            f"The liver mask covers {fraction:.0%} of the image ({ml / 1000:.1f} l); a liver covers less than "
            f"{MAX_LIVER_MASK_FRACTION:.0%} of even a tight crop and less than {MAX_LIVER_VOLUME_ML / 1000:.0f} l. "
            "Check that the mask is the liver's segmentation (nonzero = liver), not inverted, a body mask or "
            "another organ's label, or run without it.")


# Peak memory of a process running `run_pipeline` (classification included), input included: 1.42-1.47 GB for
# ircadb1_1 (512 x 512 x 129, int16), 2.93 GB for the same CT padded with air to 387 slices
# (`benchmarks/bench_memory.py`): about 22 bytes a voxel for the whole-volume arrays (the float copy, the denoised
# volume, the label maps, the Grad-CAM volume) plus what the liver's box needs. The estimate below is 1.88 and
# 3.64 GB for those two: on the safe side.
MEMORY_BYTES_PER_VOXEL = 26
MEMORY_FIXED_BYTES = 1.0e9
MEMORY_USABLE_FRACTION = 0.8  # of the machine's physical memory


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine in bytes, or None where it cannot be read (then nothing is checked)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - psutil is optional
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(ct: sitk.Image, available_bytes: int | None = None) -> None:
    """Raise InputError, before any work, when the run would need more memory than this machine has.

    The need is estimated from the voxel count (`MEMORY_BYTES_PER_VOXEL`, `MEMORY_FIXED_BYTES`) and compared
    with `MEMORY_USABLE_FRACTION` of the physical memory (`available_bytes`, default `physical_memory_bytes`).
    """
    available = physical_memory_bytes() if available_bytes is None else available_bytes
    voxels = int(np.prod(ct.GetSize(), dtype=np.int64))
    need = MEMORY_BYTES_PER_VOXEL * voxels + MEMORY_FIXED_BYTES
    if available is None or need <= MEMORY_USABLE_FRACTION * available:
        return
    size = "×".join(str(n) for n in ct.GetSize())
    spacing = "×".join(f"{s:g}" for s in ct.GetSpacing())
    raise InputError(
        f"The CT is too large for this machine's memory: {size} voxels ({voxels / 1e6:.0f} million, {spacing} mm) "
        f"would need about {need / 1e9:.1f} GB and this machine has {available / 1e9:.1f} GB. Crop it to the "
        "upper abdomen round the liver (Slicer: Crop Volume module; or any tool that keeps the geometry), or "
        "resample it to thicker slices, then run again."
    )


LIVER_BOX_MARGIN_MM = 10.0  # the edge-preserving filter runs on the liver's bounding box plus this margin


def tissue_stage(ct: sitk.Image, landmarks: dict[str, np.ndarray] | None, liver_mask: sitk.Image | None,
                 options: PipelineOptions, progress: Progress | None = None,
                 should_cancel: Callable[[], bool] | None = None):
    """Stages 1 and 2: denoising and EM tissues; returns (denoised, TissueResult, timings in s), every image
    on the CT's grid.

    The stages run on the CT stored in canonical order (`geometry.to_canonical_storage`: the same voxels with
    index axes as near L, P, S as they come), and their images are mapped back onto the CT's grid: a scan gives
    the same result voxel for voxel whether it is stored LPS (DICOM), RAS (many NIfTI files) or in any other
    axis order (block averages drop the remainder at the end of an axis and ties are broken in scan order, so
    without this the liver masks of two storage orders differed by up to 0.05 %). See `_tissue_stage_canonical`.
    """
    order = geometry.storage_order(ct)
    if order.identity:
        return _tissue_stage_canonical(ct, landmarks, liver_mask, options, progress, should_cancel)
    mask = geometry.to_canonical_storage(liver_mask, order) if liver_mask is not None else None
    denoised, tissues, timings = _tissue_stage_canonical(geometry.to_canonical_storage(ct, order), landmarks, mask,
                                                         options, progress, should_cancel)

    def back(image: sitk.Image) -> sitk.Image:
        return geometry.from_canonical_storage(image, ct, order)

    tissues = dataclasses.replace(tissues, liver_mask=back(tissues.liver_mask), tissue=back(tissues.tissue),
                                  lesion_labels=back(tissues.lesion_labels), vessel_mask=back(tissues.vessel_mask))
    return back(denoised), tissues, timings


def _tissue_stage_canonical(ct: sitk.Image, landmarks: dict[str, np.ndarray] | None, liver_mask: sitk.Image | None,
                            options: PipelineOptions, progress: Progress | None = None,
                            should_cancel: Callable[[], bool] | None = None):
    """`tissue_stage` on a CT in any storage order (it is called with the canonical one).

    By default the liver is found first, on the CT as it is (liver extraction works on a block-averaged
    copy of about 2.5 mm voxels, which averages the noise away), and the denoising filter then runs only on
    the liver's bounding box plus `LIVER_BOX_MARGIN_MM`: outside that box the denoised image is the input.
    With `options.denoise_whole_volume` the whole body is denoised first and the liver is found on the
    denoised CT (slower; the denoised volume is then complete). A given liver mask is used as it is.
    """
    from . import denoise, liver, tissue_model

    timings: dict[str, float] = {}
    mask = liver_mask
    region = None
    extract_s = None  # liver extraction done here, before denoising
    if not options.denoise_whole_volume and options.denoise_method != "none":
        if mask is None:
            t0 = time.perf_counter()
            if landmarks:
                liver.check_landmarks_inside(ct, landmarks)
            mask = liver.extract_liver(ct, landmarks, raw=True, progress=_stage_progress(progress, 0.0, 0.3))
            extract_s = time.perf_counter() - t0
        margin = np.ceil(LIVER_BOX_MARGIN_MM / np.asarray(ct.GetSpacing())).astype(int)
        region = liver.mask_bounding_box(mask, margin_voxels=margin)
    _check_cancel(should_cancel)
    t0 = time.perf_counter()
    if options.denoise_method == "none":
        denoised = ct
    else:
        denoised = denoise.denoise(ct, options.denoise_method, median_radius_mm=options.median_radius_mm,
                                   region=region, progress=_stage_progress(progress, 0.3, 0.45))
    timings["denoise_s"] = time.perf_counter() - t0
    _check_cancel(should_cancel)
    t0 = time.perf_counter()
    tissues = tissue_model.segment_tissues(
        denoised, landmarks, mask, n_classes=options.n_classes, lesion_parameters=options.lesion_parameters(),
        lesion_points=options.lesion_points, liver_extracted=liver_mask is None,
        progress=_stage_progress(progress, 0.45, 1.0))
    timings["tissue_s"] = time.perf_counter() - t0 + (extract_s or 0.0)
    timings.update({f"tissue_{key}": value for key, value in tissues.timings.items()})
    if extract_s is not None:  # segment_tissues only copied the mask found above
        timings["tissue_liver_s"] = extract_s
    return denoised, tissues, timings


def run_pipeline(
    ct: sitk.Image,
    landmarks: dict[str, np.ndarray] | None,
    liver_mask: sitk.Image | None = None,
    options: PipelineOptions | None = None,
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    proposed_landmarks=None,
) -> PipelineResult:
    """Run every stage on a CT in Hounsfield units.

    Args:
        ct: the CT volume (any scalar pixel type, values in HU, any spacing and direction).
        landmarks: label → point in LPS mm (IVC, IVC_inferior, RHV, MHV, LHV, RPV, LPV, UP); None skips
            the Couinaud stage and leaves liver extraction without seeds.
        liver_mask: optional liver mask on the CT's grid (nonzero = liver); replaces EM liver extraction.
        options: settings; defaults when None.
        progress: called with (fraction 0..1, message).
        should_cancel: polled between stages; when it returns True, `Cancelled` is raised.
        proposed_landmarks: the `landmarks.ProposedLandmarks` that `landmarks` came from, when they were proposed
            from the CT: the report lists them (confidence, reason, and the ones not found); when a landmark the
            Couinaud map needs was not found, the map is not computed and a warning says which were missing.

    All input is checked before any work, and the inputs are never modified.
    """
    from . import couinaud, lesions, tissue_model

    options = options or PipelineOptions()
    options.validate()
    absent = dependencies.missing(dependencies.packages_for_run(liver_mask is not None, options.classify))
    if absent:  # before any work: a missing package found after a minute of processing loses that minute
        raise dependencies.MissingPackage(absent[0])
    check_memory(ct)  # before the float copy that validate_ct makes
    ct_float = io.validate_ct(ct)
    mask = _binary_liver_mask(liver_mask, ct_float) if liver_mask is not None else None
    warnings: list[str] = []
    proposed_record = None
    if proposed_landmarks is not None:
        proposed_record = {"proposed": {k: {"confidence": proposed_landmarks.confidence[k],
                                            "reason": proposed_landmarks.reasons[k]} for k in proposed_landmarks.points},
                           "missing": dict(proposed_landmarks.missing)}
        lacking = [k for k in labels.REQUIRED_LANDMARKS if k not in (landmarks or {})]
        if lacking:
            warnings.append(f"Landmarks proposed from the CT: {', '.join(proposed_landmarks.points) or 'none'}; "
                            f"not found: {', '.join(proposed_landmarks.missing)}. Couinaud segments are not computed "
                            f"without {', '.join(lacking)}: click them (or confirm the proposed file in Slicer) and "
                            "run again.")
            landmarks = None
        else:
            warnings.append(f"Landmarks proposed from the CT (not clicked): {', '.join(proposed_landmarks.points)}.")
    if landmarks:
        warnings += couinaud.check_landmarks(landmarks, ct_float)
    else:
        warnings.append("No landmarks: Couinaud segments are not computed" + ("" if mask is not None else
                        ", and the liver is found without seeds (place landmarks for a reliable liver extraction)") + ".")
    model = None
    if options.classify:  # load (and check) the weights before any work, so a bad file fails fast
        from . import classifier

        model = classifier.load_model(options.weights_path)
    timings: dict[str, float] = {}

    _check_cancel(should_cancel)
    denoised, tissues, stage_timings = tissue_stage(ct_float, landmarks or None, mask, options,
                                                    _stage_progress(progress, 0.0, 0.6), should_cancel)
    timings.update(stage_timings)
    warnings += tissue_model.contrast_phase_warnings(tissues.model) + tissues.warnings
    rows = {row["id"]: row for row in lesions.measure_lesions(tissues.lesion_labels, ct_float)}
    for row in tissues.lesion_rows:
        rows.setdefault(row["id"], {"id": row["id"]}).update(row)

    couinaud_labels = None
    couinaud_result = None
    if landmarks:
        _check_cancel(should_cancel)
        _stage_progress(progress, 0.6, 0.75)(0.0, "Couinaud segments")
        t0 = time.perf_counter()
        couinaud_result = couinaud.map_couinaud(tissues.liver_mask, landmarks, tissues.vessel_mask,
                                                method=options.couinaud_method, segments=options.couinaud_segments)
        couinaud_labels = couinaud_result.labels
        warnings += [w for w in couinaud_result.warnings if w not in warnings]
        for loc in couinaud.localize_lesions(tissues.lesion_labels, couinaud_labels, landmarks,
                                             segments=couinaud_result.segments):
            rows.setdefault(loc["id"], {"id": loc["id"]}).update(loc)
        timings["couinaud_s"] = time.perf_counter() - t0

    gradcam = None
    if model is not None and rows:
        _check_cancel(should_cancel)
        t0 = time.perf_counter()
        predictions, gradcam = classifier.classify_lesions(ct_float, tissues.lesion_labels, model,
                                                           progress=_stage_progress(progress, 0.75, 0.95))
        for pred in predictions:
            rows.setdefault(pred["id"], {"id": pred["id"]}).update(pred)
        timings["classify_s"] = time.perf_counter() - t0

    if progress is not None:
        progress(0.95, "done")
    return PipelineResult(
        ct=ct_float, denoised=denoised, liver_mask=tissues.liver_mask, tissue=tissues.tissue,
        lesion_labels=tissues.lesion_labels, vessel_mask=tissues.vessel_mask, couinaud=couinaud_labels,
        gradcam=gradcam, lesions=[rows[k] for k in sorted(rows)], em_classes=tissues.model.as_dicts(),
        landmarks=dict(landmarks) if landmarks else None, options=options, timings=timings, warnings=warnings,
        couinaud_method=couinaud_result.method if couinaud_result else None,
        couinaud_volumes_ml=couinaud_result.volumes_ml if couinaud_result else None,
        couinaud_vessel_guidance=couinaud_result.vessel_guidance if couinaud_result else None,
        couinaud_segments=options.couinaud_segments, proposed_landmarks=proposed_record,
    )


# ------------------------------------------------------------------------ segments

def lesion_segment_name(row: dict) -> str:
    """'Lesion 2 – metastasis – VII' (kind and main segment when known)."""
    parts = [f"Lesion {row['id']}"]
    if row.get("kind"):
        parts.append(str(row["kind"]))
    if row.get("main_segment"):
        parts.append(str(row["main_segment"]))
    return " – ".join(parts)


def result_segments(result: PipelineResult):
    """The result as Slicer segments: liver, each lesion, vessels, Couinaud I–VIII or I, II, III, IVa, IVb, V–VIII
    (names, colours, SNOMED codes; IVa/IVb as segment IV with the type modifier Superior/Inferior). Each mask is a
    `segfile.LabelMask` of the result's label maps, made into an array only when a writer reads it."""
    from .segfile import LabelMask, SegmentSpec

    specs = [SegmentSpec("liver", labels.LIVER.name, LabelMask(result.liver_mask), labels.LIVER)]
    for row in result.lesions:
        style = labels.lesion_style(row.get("kind"))
        specs.append(SegmentSpec(f"lesion_{row['id']}", lesion_segment_name(row), LabelMask(result.lesion_labels, row["id"]),
                                 style))
    specs.append(SegmentSpec("vessels", labels.VESSELS.name, LabelMask(result.vessel_mask), labels.VESSELS))
    if result.couinaud is not None:
        names = labels.couinaud_names(result.couinaud_segments)
        for value, style in labels.couinaud_styles(result.couinaud_segments).items():
            specs.append(SegmentSpec(f"couinaud_{names[value]}", style.name, LabelMask(result.couinaud, value), style))
    return specs


# ------------------------------------------------------------------------ reports

REPORT_COLUMNS = (
    "id", "source", "volume_ml", "max_diameter_mm", "axial_diameter_mm", "equivalent_diameter_mm", "mean_hu",
    "contrast_hu", "evidence_z", "centroid_ras", "main_segment", "segments", "segment_fractions",
    "distance_hepatic_vein_landmark_mm", "nearest_hepatic_vein_landmark", "distance_portal_vein_landmark_mm",
    "nearest_portal_vein_landmark", "kind", "malignant_probability", "kind_probabilities",
)


def jsonable(value, digits: int | None = 4):
    """`value` with numpy scalars and arrays turned into plain Python (dict keys as str, tuples as lists, NaN and
    inf as None) and floats rounded to `digits` decimals (None: kept exactly), ready for `json.dumps`."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), digits)
    if isinstance(value, (np.floating, float)):
        if not np.isfinite(value):
            return None
        return float(value) if digits is None else round(float(value), digits)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(data, path) -> Path:
    """Write data as indented JSON (numpy values converted, floats rounded to 4 decimals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(data), indent=2), encoding="utf-8")
    return path


def report_dict(result: PipelineResult) -> dict:
    """The machine-readable report: input geometry, per-lesion rows, EM classes, segments, timings, warnings."""
    from . import __version__

    ct = result.ct
    voxel_ml = geometry.voxel_volume_ml(ct)
    return {
        "software": f"LiverLocalization {__version__}",
        "input": {"size": list(ct.GetSize()), "spacing_mm": list(ct.GetSpacing()), "origin_lps_mm": list(ct.GetOrigin()),
                  "direction": list(ct.GetDirection())},
        "options": result.options.__dict__,
        "liver_volume_ml": float(sitk.GetArrayViewFromImage(result.liver_mask).sum()) * voxel_ml,
        "couinaud_method": result.couinaud_method,
        "couinaud_segments": result.couinaud_segments if result.couinaud is not None else None,
        "couinaud_volumes_ml": result.couinaud_volumes_ml,
        "couinaud_vessel_guidance": result.couinaud_vessel_guidance,
        "landmarks_ras_mm": {k: geometry.lps_to_ras(v) for k, v in (result.landmarks or {}).items()},
        "landmarks_proposed": result.proposed_landmarks,
        "lesions": result.lesions,
        "em_classes": result.em_classes,
        "timings_s": result.timings,
        "warnings": result.warnings,
    }


def write_report_csv(rows: list[dict], path) -> Path:
    """One row per lesion; nested values (fractions, probabilities) as compact JSON in their cell."""
    path = Path(path)
    extra = sorted({k for row in rows for k in row} - set(REPORT_COLUMNS))
    columns = list(REPORT_COLUMNS) + extra
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            cells = []
            for col in columns:
                value = jsonable(row.get(col, ""))
                cells.append(json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else value)
            writer.writerow(cells)
    return path


def summary_text(result: PipelineResult) -> str:
    """A readable summary for the terminal: liver volume, each lesion with its segment(s) and kind."""
    report = report_dict(result)
    lines = [f"Liver: {report['liver_volume_ml']:.0f} ml; {len(result.lesions)} lesion(s) found."]
    for row in result.lesions:
        text = (f"  Lesion {row['id']}: maximum diameter {row.get('max_diameter_mm', float('nan')):.0f} mm "
                f"(longest axial {row.get('axial_diameter_mm', float('nan')):.0f} mm), {row.get('volume_ml', 0):.1f} ml")
        if row.get("main_segment"):
            others = [s for s in row.get("segments", []) if s != row["main_segment"]]
            text += f", segment {row['main_segment']}" + (f" (also {', '.join(others)})" if others else "")
        if row.get("kind"):
            text += f", {row['kind']} (malignant p={row.get('malignant_probability', float('nan')):.2f})"
        lines.append(text)
    for warning in result.warnings:
        lines.append(f"Note: {warning}")
    timing = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in result.timings.items() if k.endswith("_s") and "_" not in k[:-2])
    if timing:
        lines.append(f"Time: {timing}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ outputs

def _whole_hu(values: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """The HU voxels `values` ([z, y, x], on `reference`'s grid) rounded to whole HU as int16, the way CTs are
    stored: a quarter of the float file's size and written in less than half the time (512x512x129: 25 MB, 1.5 s
    against 97 MB, 3.5 s), and a difference below half a HU is far under any CT's noise."""
    arr = np.empty(values.shape, dtype=np.int16)
    for z in range(0, values.shape[0], 16):  # slab by slab: no full-size float temporaries
        arr[z:z + 16] = np.clip(np.rint(values[z:z + 16]), -32768, 32767)
    return geometry.copy_geometry(arr, reference)


def write_outputs(result: PipelineResult, out_dir, figures: bool = True, progress: Progress | None = None) -> dict[str, Path]:
    """Write images (.nii.gz), the Slicer segmentation (.seg.nrrd), report.json/.csv and figures to out_dir.

    The denoised CT, the label maps, the segmentation and the reports are written in a second thread while this
    one writes the Grad-CAM volume and draws the figures: compressing spends its time in SimpleITK and zlib, which
    release Python's lock, and drawing holds it, so on two cores the two overlap (`benchmarks/bench_e2e.py`). The
    second thread reads no voxels of the result's images through SimpleITK (only their grids): it is given numpy
    views taken here and writes images of its own made from them (one label map at a time). Why: SimpleITK gives an
    image a buffer of its own when its voxels are read while the buffer is shared (with another image, or with a
    writer while it writes), and the buffer it leaves is freed once the other holder lets go, under any view taken
    before. So every image is made sole owner of its buffer here, before the second thread starts, and only this
    thread reads or writes their voxels through SimpleITK from then on: no read replaces a buffer."""
    from concurrent.futures import ThreadPoolExecutor

    from . import segfile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for image in (result.ct, result.denoised, result.liver_mask, result.tissue, result.lesion_labels,
                  result.vessel_mask, result.couinaud, result.gradcam):
        if image is not None:
            sitk.GetArrayViewFromImage(image)  # sole owner of its buffer from here on (see above)
    images = {"denoised": result.denoised, "tissue": result.tissue, "lesions": result.lesion_labels,
              "couinaud": result.couinaud}
    views = {name: (sitk.GetArrayViewFromImage(image), image) for name, image in images.items() if image is not None}
    specs = result_segments(result)  # LabelMasks: views of the label maps, taken here
    report = report_dict(result)

    def in_background() -> dict[str, Path]:
        written = {}
        for name, (values, reference) in views.items():  # one image at a time
            image = _whole_hu(values, reference) if name == "denoised" else geometry.copy_geometry(values, reference)
            written[name] = io.write_image(image, out / f"{name}.nii.gz")
            del image
        written["segmentation"] = segfile.write_seg_nrrd(out / "segmentation.seg.nrrd", result.ct, specs)
        written["report_json"] = write_json(report, out / "report.json")
        written["report_csv"] = write_report_csv(result.lesions, out / "report.csv")
        return written

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="liverloc-write") as pool:
        background = pool.submit(in_background)
        paths = {}
        if result.gradcam is not None:
            paths["gradcam"] = io.write_image(result.gradcam, out / "gradcam.nii.gz")
        if figures:
            if progress is not None:
                progress(0.97, "figures")
            paths.update(write_figures(result, out))
        paths = {**background.result(), **paths}
    if progress is not None:
        progress(1.0, "written")
    return paths


def write_figures(result: PipelineResult, out: Path) -> dict[str, Path]:
    """overview.png (stage panel), couinaud.png, gradcam.png where those stages ran."""
    from .figures import overview

    paths = {"overview": overview.plot_overview(result.ct, result.denoised, result.liver_mask, result.tissue,
                                                result.lesion_labels, out / "overview.png")}
    if result.couinaud is not None:
        from .figures import couinaud as couinaud_figure

        paths["couinaud_png"] = couinaud_figure.plot_couinaud(result.ct, result.couinaud, result.landmarks,
                                                              result.lesion_labels, out / "couinaud.png")
    if result.gradcam is not None and result.lesions:
        from .figures import classifier as classifier_figure

        paths["gradcam_png"] = classifier_figure.plot_gradcam_panels(result.ct, result.lesion_labels, result.gradcam,
                                                                     result.lesions, out / "gradcam.png")
    return paths


# ------------------------------------------------------------------------ scoring on a phantom

def score_against_phantom(result: PipelineResult, truth_dir) -> dict:
    """Compare a result with a phantom's ground truth folder (as written by `liverloc phantom`)."""
    from . import metrics

    truth_dir = Path(truth_dir)
    truth = json.loads((truth_dir / "truth.json").read_text(encoding="utf-8"))
    truth_couinaud = io.read_image(truth_dir / "truth_couinaud.nii.gz")
    truth_lesions = io.read_image(truth_dir / "truth_lesions.nii.gz")
    geometry.require_same_geometry(truth_couinaud, result.ct, "The phantom's truth")
    liver_truth = sitk.GetArrayViewFromImage(truth_couinaud) > 0
    scores: dict = {"liver_dice": metrics.dice(result.liver_mask, liver_truth)}
    lesion_truth = sitk.GetArrayViewFromImage(truth_lesions)
    scores["lesion_dice"] = metrics.dice(sitk.GetArrayViewFromImage(result.lesion_labels) > 0, lesion_truth > 0)
    match = metrics.match_instances(result.lesion_labels, truth_lesions)
    truth_rows = {row["id"]: row for row in truth.get("lesions", [])}
    big = [i for i, row in truth_rows.items() if row.get("diameter_mm", 0) >= 10]
    found = {b for _, b, _ in match["pairs"]}
    scores["lesions_truth"] = len(truth_rows)
    scores["detection_recall_ge10mm"] = (sum(i in found for i in big) / len(big)) if big else None
    scores["false_positives"] = len(match["false_positives"])
    scores["missed_lesions"] = [
        {"truth_id": i, "equivalent_diameter_mm": truth_rows.get(i, {}).get("diameter_mm"),
         "kind": truth_rows.get(i, {}).get("kind"), "main_segment": truth_rows.get(i, {}).get("main_segment")}
        for i in sorted(match["missed"])]
    by_id = {row["id"]: row for row in result.lesions}
    scores["false_lesions"] = [
        {"id": i, **{k: by_id.get(i, {}).get(k) for k in ("volume_ml", "max_diameter_mm", "main_segment")}}
        for i in sorted(match["false_positives"])]
    if result.couinaud is not None:  # the phantom's truth has eight segments: IVa and IVb are scored as IV
        test_arr = sitk.GetArrayViewFromImage(result.couinaud)
        test_arr = np.where(test_arr == labels.COUINAUD_IVB, np.uint8(labels.COUINAUD_IVA), test_arr)
        rows = metrics.per_class_table(test_arr, truth_couinaud, labels.COUINAUD_ROMAN)
        scores["couinaud_dice"] = {row["name"]: row["dice"] for row in rows}
        scores["couinaud_mean_dice"] = float(np.mean([row["dice"] for row in rows]))
    located, classified = [], []
    for test_id, truth_id, _ in match["pairs"]:
        mine, true = by_id.get(test_id, {}), truth_rows.get(truth_id, {})
        if "main_segment" in mine and "main_segment" in true:
            located.append(labels.eight_segment_name(mine["main_segment"]) == true["main_segment"])
        if "kind" in mine and "kind" in true:
            classified.append((mine["kind"] == true["kind"],
                               (mine.get("malignant_probability", 0) >= 0.5) == bool(true.get("malignant"))))
    scores["main_segment_correct"] = f"{sum(located)}/{len(located)}"
    if classified:
        scores["kind_correct"] = f"{sum(k for k, _ in classified)}/{len(classified)}"
        scores["malignancy_correct"] = f"{sum(m for _, m in classified)}/{len(classified)}"
    return scores


def _mm(value) -> str:
    return f"{value:.0f} mm" if isinstance(value, (int, float)) else "? mm"


def _ml(value) -> str:
    return f"{value:.1f} ml" if isinstance(value, (int, float)) else "? ml"


def scores_text(scores: dict) -> str:
    """Readable lines of score_against_phantom's result."""
    lines = [f"Against the phantom's truth: liver Dice {scores['liver_dice']:.3f}, lesion Dice {scores['lesion_dice']:.3f}, "
             f"{scores['false_positives']} false positive lesion(s)"]
    if scores.get("detection_recall_ge10mm") is not None:
        lines.append(f"  detection recall (lesions >= 10 mm): {scores['detection_recall_ge10mm']:.2f}")
    if "couinaud_mean_dice" in scores:
        per = ", ".join(f"{k} {v:.2f}" for k, v in scores["couinaud_dice"].items())
        lines.append(f"  Couinaud mean Dice {scores['couinaud_mean_dice']:.3f} ({per})")
    for miss in scores.get("missed_lesions", []):
        lines.append(f"  missed: truth lesion {miss['truth_id']}, {miss['kind']}, {_mm(miss['equivalent_diameter_mm'])} "
                     f"(equivalent-sphere diameter), segment {miss['main_segment']}")
    for false in scores.get("false_lesions", []):
        lines.append(f"  false: lesion {false['id']}, {_mm(false['max_diameter_mm'])} (maximum diameter), "
                     f"{_ml(false['volume_ml'])}, segment {false['main_segment'] or '-'}")
    lines.append(f"  main segment correct: {scores['main_segment_correct']}")
    if "kind_correct" in scores:
        lines.append(f"  kind correct: {scores['kind_correct']}, malignant/benign correct: {scores['malignancy_correct']}")
    return "\n".join(lines)
