"""Reading and writing images and Slicer markups, with geometry kept exactly.

Images: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and DICOM series folders,
all through SimpleITK. Markups: Slicer's ``.mrk.json`` (schema v1.0.x), honouring the file's
``coordinateSystem`` (LPS or RAS); landmarks in memory are LPS millimetres.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import lps_to_ras, ras_to_lps

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3-D image file or a DICOM series folder; the geometry is kept as stored.

    A folder is read as the DICOM series it holds (the one with most slices when there are several).
    Raises InputError when the path is missing or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder. Check the path.")
    if path.is_dir():
        return _read_dicom_folder(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(
            f"{path}: cannot be read as an image ({first}). Use NIfTI (.nii.gz), NRRD (.nrrd), "
            "MetaImage (.mha) or a folder of DICOM files."
        ) from None


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
    if not series_ids:
        raise InputError(f"{folder}: a folder with no DICOM series in it. Point to a folder of DICOM slices or an image file.")
    files = max((reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len)
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: the DICOM series cannot be read ({str(exc).strip().splitlines()[-1]}).") from None


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an image (format from the suffix), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
    return path


def validate_ct(image: sitk.Image, name: str = "The input volume") -> sitk.Image:
    """Check that an image is a usable 3-D CT in Hounsfield units; returns it as float32.

    Raises InputError for 2-D or tiny volumes, vector images, NaN/inf, constant images and
    intensity ranges that are not CT (e.g. MRI, or CT stored without rescale to HU).
    """
    if image.GetDimension() != 3:
        raise InputError(f"{name} is {image.GetDimension()}-D; a 3-D CT volume is needed (load the whole series).")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour/vector); a scalar CT is needed.")
    size = image.GetSize()
    if min(size) < 8:
        raise InputError(f"{name} has size {size}: at least 8 voxels along every axis are needed (is it a single slice or a thin stack?).")
    spacing = image.GetSpacing()
    if min(spacing) <= 0 or max(spacing) > 20:
        raise InputError(f"{name} has voxel spacing {spacing} mm, which is not a CT's; check the file's header.")
    arr = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values; fill them (e.g. with -1024 HU) before running.")
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo < 1:
        raise InputError(f"{name} is constant ({lo:g} everywhere): nothing can be segmented.")
    p50 = float(np.percentile(arr[:: max(1, arr.shape[0] // 16), ::4, ::4], 50))
    if lo > -200 or hi < 100 or lo < -3100 or hi > 40000 or not (-1100 <= p50 <= 500):
        raise InputError(
            f"{name} does not look like CT in Hounsfield units (range {lo:g} to {hi:g}, median {p50:g}); "
            "air should be near -1000 HU and liver near 100 HU. Check the modality, or rescale the values to HU."
        )
    return sitk.Cast(image, sitk.sitkFloat32)


def read_markups(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a Slicer markups file (``.mrk.json``) or a Slicer/ITK ``.fcsv``: label → point in LPS mm.

    Points in files stated as RAS are converted; undefined points are skipped; when a label appears
    twice, InputError names it.
    """
    points: dict[str, np.ndarray] = {}
    for label, p in _markup_points(Path(path)):
        if label in points:
            raise InputError(f"{path}: landmark {label!r} appears twice; keep one point per label.")
        points[label] = p
    return points


def read_lesion_points(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Points clicked inside lesions, from a markups file as `read_markups` reads it: name → LPS mm. Labels may
    be empty or repeated (Slicer numbers new points itself): each point is named by its label, or 'point N',
    with ' (N)' added where a name repeats. InputError when the file holds no defined point."""
    points: dict[str, np.ndarray] = {}
    for n, (label, p) in enumerate(_markup_points(Path(path)), start=1):
        name = label or f"point {n}"
        if name in points:
            name = f"{name} ({n})"
        points[name] = p
    if not points:
        raise InputError(f"{path}: no defined point; click at least one point inside a lesion.")
    return points


def _markup_points(path: Path) -> list[tuple[str, np.ndarray]]:
    """(label, LPS point) of every defined control point of a .mrk.json or .fcsv file, in file order."""
    if not path.exists():
        raise InputError(f"{path}: no such markups file.")
    if path.suffix.lower() == ".fcsv":
        return _read_fcsv(path)
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a Slicer markups JSON file ({exc}).") from None
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not markups:
        raise InputError(f"{path}: no 'markups' list; save the points from Slicer as a Markups JSON (.mrk.json) file.")
    points: list[tuple[str, np.ndarray]] = []
    for markup in markups:
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise InputError(f"{path}: unknown coordinateSystem {system!r}; expected LPS or RAS.")
        for cp in markup.get("controlPoints", []):
            if cp.get("positionStatus", "defined") != "defined" or "position" not in cp:
                continue
            label = str(cp.get("label", "")).strip()
            p = np.asarray(cp["position"], dtype=float)
            if p.shape != (3,) or not np.isfinite(p).all():
                raise InputError(f"{path}: control point {label!r} has an invalid position {cp['position']}.")
            points.append((label, ras_to_lps(p) if system == "RAS" else p))
    return points


def _read_fcsv(path: Path) -> list[tuple[str, np.ndarray]]:
    system = "RAS"
    points: list[tuple[str, np.ndarray]] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            if "CoordinateSystem" in line:
                value = line.split("=")[-1].strip().upper()
                system = {"0": "RAS", "1": "LPS"}.get(value, value)
            continue
        fields = line.split(",")
        if len(fields) < 12:
            continue
        p = np.asarray([float(v) for v in fields[1:4]])
        points.append((fields[11].strip(), ras_to_lps(p) if system == "RAS" else p))
    return points


def write_markups(path: str | os.PathLike, landmarks_lps: dict[str, np.ndarray], coordinate_system: str = "LPS") -> Path:
    """Write landmarks (label → LPS mm) as a Slicer point-list markups file in LPS or RAS."""
    coordinate_system = coordinate_system.upper()
    if coordinate_system not in ("LPS", "RAS"):
        raise ValueError("coordinate_system must be 'LPS' or 'RAS'")
    control_points = []
    for i, (label, p) in enumerate(landmarks_lps.items(), start=1):
        q = lps_to_ras(p) if coordinate_system == "RAS" else np.asarray(p, dtype=float)
        control_points.append({
            "id": str(i), "label": label, "description": "", "associatedNodeID": "",
            "position": [round(float(v), 4) for v in q],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": False, "visibility": True, "positionStatus": "defined",
        })
    doc = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [{
            "type": "Fiducial", "coordinateSystem": coordinate_system, "coordinateUnits": "mm",
            "locked": False, "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(control_points), "controlPoints": control_points,
            "measurements": [],
        }],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path
