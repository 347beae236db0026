"""Couinaud segments I–VIII (or nine, IV split into IVa/IVb) from vessel landmarks (planes, portal territories).

Everything is computed in physical LPS millimetres, from the voxel centres of the liver mask
(``geometry``), so the result does not depend on the image's spacing, orientation or storage order.

Geometry (domain.md §1, docs/couinaud_geometry.md):

* **Axis.** A vertical line through ``IVC`` (hepatic-vein confluence). By default (``axis='patient'``) its
  direction is the patient's superior–inferior axis (LPS +z): measured more accurate and far less
  sensitive to click errors than the line through ``IVC`` and ``IVC_inferior`` (two points 5–7 cm apart:
  5 mm of error tilts it by 5°), which ``axis='ivc'`` uses when ``IVC_inferior`` is given.
  Heights ``h`` are measured along the axis from ``IVC``; "horizontal" means perpendicular to it.
* **Hepatic planes.** The three vertical planes through the IVC axis and ``RHV``, ``MHV``, ``LHV`` are
  half-planes at azimuths φ_R < φ_M < φ_L about the axis (azimuth 0 toward the RHV, increasing from the
  patient's right through anterior to the left). A voxel's azimuth puts it in one sector: right posterior
  (VI/VII) below φ_R, right anterior (V/VIII) up to φ_M, IV up to the left border, II/III beyond, and
  back to the right posterior sector across the cut that bisects the reflex angle from φ_L round to φ_R
  (behind the IVC). Below the LHV, the IV | II/III border turns to the azimuth of ``UP`` (umbilical
  portion; falciform ligament), blended linearly in height between the two landmarks.
* **Portal planes.** Horizontal (perpendicular to the IVC axis) per side: through ``RPV`` for the right
  liver (VII/VIII above, VI/V below) and through ``LPV`` for the left lateral section (II above, III
  below), as the reference annotations (3D-IRCADb / GLC-UNet) draw them. IVa/IVb are not split (label 4) unless
  nine segments are asked for (``segments=9``): then IV is split at the left side's superior/inferior height (the LPV
  plane, or the left lateral sector's portal height with vessel-guided borders; `split_heights`) into IVa above
  (label 4) and IVb below (label 9, `labels.COUINAUD_IVB`), after whichever method labelled IV (`split_segment_iv`).
* **Segment I.** The dorsal region in front of the IVC, behind the hilum: an elliptic cylinder in the
  horizontal plane on the line from the IVC to the portal bifurcation ``B`` (mid-point of RPV and LPV),
  from just behind the IVC to two thirds of the way to B (``CAUDATE_*``, in units of D, the horizontal
  distance IVC–B), from the height of B (the caudate process ends at the hilum) up to that of ``IVC``
  (where the hepatic veins join it). The IVC it is measured from is the middle of the retrohepatic IVC, half-way
  between the ``IVC`` and ``IVC_inferior`` clicks (`caudate_frame`): two clicks averaged err less than one.

Portal territories (``method='territories'``) refine the planes with a vessel mask: see `portal_territories`.
Vessel-guided borders (``method='vessels'``) bend the three hepatic sector borders along the hepatic veins
traced in a vessel mask (`trace_hepatic_veins`, `VeinBorders`) and put each sector's superior/inferior
border at the height of its portal branches (`portal_split_heights`); segment I as above. ``method='auto'``
(the default) uses them when the mask shows the whole tree (`VesselGuidance.complete`), else the planes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from . import geometry, labels
from .errors import InputError

Progress = Callable[[float, str], None]

METHODS = ("auto", "planes", "territories", "vessels")
AXES = ("patient", "ivc")

# Segment I shape, as fractions of the horizontal distance D from the IVC axis to the portal bifurcation
CAUDATE_CENTRE = 0.25  # centre of the ellipse along the axis→bifurcation line, in D (docs/couinaud_geometry.md)
CAUDATE_ALONG = 0.40  # semi-axis along that line
CAUDATE_ACROSS = 0.38  # semi-axis across it
CAUDATE_LEFT = -0.05  # centre's shift to the patient's left of that line (negative: to the right)
MIN_VEIN_RADIUS_MM = 5.0  # a hepatic vein landmark closer than this to the IVC axis defines no plane
MIN_SEPARATION_MM = 3.0  # two landmarks closer than this are taken as coincident
MIN_SECTOR_DEG = 3.0  # hepatic veins closer than this in azimuth about the IVC axis are taken as collinear with it
SEGMENT_MIN_FRACTION = 0.05  # lesion share of a segment for it to be listed in "segments"


@dataclass
class CouinaudResult:
    """Couinaud label map and its summary.

    labels: uint8 0 outside the liver, 1..8 = segments I..VIII, the liver mask's geometry; with nine segments 4 is
        IVa and 9 is IVb (`labels.couinaud_names`).
    method: 'planes', 'territories' or 'vessels' (what was actually used).
    warnings: messages for the user (missing optional landmarks, what the result falls back to).
    missing_landmarks: optional landmarks that were absent.
    volumes_ml: segment name "I".."VIII" (with "IVa", "IVb" for nine) → volume in ml; fractions: → share of the
        labelled liver.
    vessel_guidance: what the vessel mask showed, when it was traced (see `VesselGuidance.summary`), else None.
    segments: 8 or 9, the segments of `labels`.
    """

    labels: sitk.Image
    method: str
    warnings: list[str] = field(default_factory=list)
    missing_landmarks: list[str] = field(default_factory=list)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    fractions: dict[str, float] = field(default_factory=dict)
    vessel_guidance: dict | None = None
    segments: int = 8


@dataclass
class LandmarkFrame:
    """The landmark geometry in one frame (all LPS mm / radians).

    origin: IVC landmark; axis: unit IVC axis pointing superior; e1, e2: horizontal unit vectors (e1 toward
    the RHV, e2 = axis × e1, so that azimuth increases from the patient's right through anterior to left).
    azimuth: landmark → azimuth (radians, RHV = 0); height: landmark → height along the axis from IVC;
    cut: azimuth of the posterior cut where the left lateral sector meets the right posterior one
    (between φ_L and 2π); bifurcation: B, the mid-point of RPV and LPV.
    """

    origin: np.ndarray
    axis: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    azimuth: dict[str, float]
    height: dict[str, float]
    radius: dict[str, float]
    cut: float
    bifurcation: np.ndarray
    axis_from_landmarks: bool


def _missing_message(names) -> str:
    return "; ".join(f"{n} ({labels.LANDMARK_PLACES.get(n, '')})" for n in names)


def _horizontal(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return v - np.outer(v @ axis, axis) if v.ndim == 2 else v - (v @ axis) * axis


def landmark_frame(landmarks: dict[str, np.ndarray], axis: str = "patient") -> LandmarkFrame:
    """Build the frame from the landmarks (LPS mm). Assumes `check_landmarks` passed.

    axis: 'patient' (vertical = LPS +z through IVC) or 'ivc' (IVC_inferior → IVC when IVC_inferior is given).
    """
    if axis not in AXES:
        raise InputError(f"Unknown axis {axis!r}; choose one of {', '.join(AXES)}.")
    pts = {k: np.asarray(v, dtype=float) for k, v in landmarks.items()}
    c = pts["IVC"]
    if axis == "ivc" and "IVC_inferior" in pts:
        axis = c - pts["IVC_inferior"]
        axis = axis / np.linalg.norm(axis)
        from_landmarks = True
    else:
        axis = np.array([0.0, 0.0, 1.0])  # LPS +z = superior
        from_landmarks = False
    e1 = _horizontal(pts["RHV"] - c, axis)
    e1 = e1 / np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    azimuth, height, radius = {}, {}, {}
    for name, p in pts.items():
        d = p - c
        h = float(d @ axis)
        x, y = float(d @ e1), float(d @ e2)
        height[name] = h
        radius[name] = float(np.hypot(x, y))
        azimuth[name] = float(np.arctan2(y, x) % (2 * np.pi))
    azimuth["RHV"] = 0.0  # by construction (e1 points to it); avoids 2π from rounding
    # the cut behind the IVC bisects the reflex angle from the left border round to the RHV (2π)
    left = max(azimuth["LHV"], azimuth.get("UP", azimuth["LHV"]))
    cut = (left + 2 * np.pi) / 2.0
    bif = (pts["RPV"] + pts["LPV"]) / 2.0
    return LandmarkFrame(c, axis, e1, e2, azimuth, height, radius, float(cut), bif, from_landmarks)


def _inside(reference: sitk.Image, p: np.ndarray, margin_vox: float = 0.5) -> bool:
    idx = geometry.lps_to_index(reference, p)
    size = np.asarray(reference.GetSize(), dtype=float)
    return bool(np.all(idx >= -margin_vox) and np.all(idx <= size - 1 + margin_vox))


def check_landmarks(landmarks: dict[str, np.ndarray], reference: sitk.Image | None = None) -> list[str]:
    """Check Couinaud landmarks (label → LPS mm); return warnings, raise InputError on unusable ones.

    Errors: a required landmark (IVC, RHV, MHV, LHV, RPV, LPV) missing; a point that is not 3 finite
    numbers; a point outside `reference` (when given; usually the CT); two landmarks within 3 mm of each
    other; a hepatic vein within 5 mm of the IVC axis (no plane); hepatic veins not in the order right,
    middle, left going from the patient's right through anterior to left about the IVC (swapped labels or a
    mirrored image); RPV not to the right of LPV; IVC_inferior not below IVC or the IVC axis tilted more than
    45° from the patient's superior–inferior axis; the portal bifurcation more than 30 mm above the
    hepatic-vein confluence or more than 120 mm below it.
    Warnings: missing optional landmarks (UP, IVC_inferior) with what the result falls back to, and
    unknown labels (ignored).
    """
    warnings: list[str] = []
    if not isinstance(landmarks, dict):
        raise InputError("Landmarks must be a mapping of label → point (LPS mm).")
    pts: dict[str, np.ndarray] = {}
    for name, p in landmarks.items():
        arr = np.asarray(p, dtype=float)
        if arr.shape != (3,) or not np.isfinite(arr).all():
            raise InputError(f"Landmark {name!r} is not a point of 3 finite coordinates (got {p!r}).")
        pts[name] = arr
    missing = [n for n in labels.REQUIRED_LANDMARKS if n not in pts]
    if missing:
        raise InputError(
            "Couinaud mapping needs the landmarks " + ", ".join(labels.REQUIRED_LANDMARKS) + "; missing: "
            + ", ".join(missing) + " (labels found: " + (", ".join(repr(n) for n in pts) or "none")
            + "). Place " + _missing_message(missing) + "."
        )
    unknown = sorted(n for n in pts if n not in labels.LANDMARK_NAMES)
    if unknown:
        warnings.append(f"Landmarks {', '.join(unknown)} are not used (known labels: {', '.join(labels.LANDMARK_NAMES)}).")
    if reference is not None:
        outside = [n for n in pts if n in labels.LANDMARK_NAMES and not _inside(reference, pts[n])]
        if outside:
            raise InputError(
                f"Landmarks {', '.join(outside)} lie outside the image. Check that they were placed on this CT and "
                "that the markups file states its coordinate system (LPS or RAS) correctly."
            )
    known = [n for n in labels.LANDMARK_NAMES if n in pts]
    for i, a in enumerate(known):
        for b in known[i + 1:]:
            if np.linalg.norm(pts[a] - pts[b]) < MIN_SEPARATION_MM:
                raise InputError(f"Landmarks {a} and {b} coincide (less than {MIN_SEPARATION_MM:g} mm apart); "
                                 f"place {a} {labels.LANDMARK_PLACES[a]} and {b} {labels.LANDMARK_PLACES[b]}.")
    if "IVC_inferior" in pts:
        axis = pts["IVC"] - pts["IVC_inferior"]
        length = float(np.linalg.norm(axis))
        if axis[2] <= 0:
            raise InputError("IVC_inferior lies above IVC: place IVC at the hepatic-vein confluence and IVC_inferior "
                             "lower down on the IVC, at the lower end of segment I (or check that the labels are not swapped).")
        tilt = float(np.degrees(np.arccos(np.clip(axis[2] / length, -1, 1))))
        if tilt > 45.0:
            raise InputError(f"The IVC axis (IVC_inferior → IVC) is tilted {tilt:.0f}° from the patient's "
                             "superior–inferior axis; both points must lie on the IVC, one above the other.")
    else:
        warnings.append("No IVC_inferior landmark: the landmarks are not checked against the IVC's course, segment I "
                        "is placed from the IVC click alone (with IVC_inferior, from the middle of the two: less "
                        "sensitive to a click's error), and the axis='ivc' option falls back to the patient's "
                        "superior–inferior axis through IVC. Place IVC_inferior " + labels.LANDMARK_PLACES["IVC_inferior"]
                        + ".")
    if "UP" not in pts:
        warnings.append("No UP landmark: segment IV is separated from II/III by the LHV plane alone, also below "
                        "the LHV. Place UP " + labels.LANDMARK_PLACES["UP"] + " for a better IV | III border.")
    frame = landmark_frame(pts)
    for v in labels.HEPATIC_VEIN_LANDMARKS:
        if frame.radius[v] < MIN_VEIN_RADIUS_MM:
            raise InputError(f"{v} lies on the IVC axis (within {MIN_VEIN_RADIUS_MM:g} mm of it), so it defines no "
                             f"plane: place {v} {labels.LANDMARK_PLACES[v]}.")
    az = frame.azimuth
    # order right → anterior → left about the axis: 0 = φ_R < φ_M < φ_L < π + some (left lateral beyond)
    if not (0.0 < az["MHV"] < az["LHV"] < 1.5 * np.pi):
        raise InputError(
            "The hepatic vein landmarks are not in anatomical order (RHV on the patient's right, MHV in the "
            "middle, LHV on the left, going round the IVC through anterior): "
            f"azimuths RHV 0°, MHV {np.degrees(az['MHV']):.0f}°, LHV {np.degrees(az['LHV']):.0f}°. "
            "Check for swapped labels or a left-right flipped image."
        )
    gaps = {("RHV", "MHV"): az["MHV"], ("MHV", "LHV"): az["LHV"] - az["MHV"]}
    for (a, b), gap in gaps.items():
        if gap < np.radians(MIN_SECTOR_DEG):
            raise InputError(f"{a} and {b} lie on almost one plane through the IVC axis (azimuths {np.degrees(gap):.1f}° "
                             f"apart), so the segment between them would be empty. Place {a} {labels.LANDMARK_PLACES[a]} and "
                             f"{b} {labels.LANDMARK_PLACES[b]}.")
    if "UP" in frame.radius and frame.radius["UP"] < MIN_VEIN_RADIUS_MM:
        raise InputError(f"UP lies on the IVC axis; place UP {labels.LANDMARK_PLACES['UP']}.")
    right_to_left = _horizontal(pts["LHV"] - pts["RHV"], frame.axis)
    if float((pts["LPV"] - pts["RPV"]) @ right_to_left) <= 0:
        raise InputError("RPV does not lie to the right of LPV (measured along RHV → LHV). Check for swapped "
                         "portal landmarks or a left-right flipped image.")
    for v in ("RPV", "LPV"):
        h = frame.height[v]
        if h > 30.0:
            raise InputError(f"{v} lies {h:.0f} mm above the hepatic-vein confluence (IVC); the portal bifurcation is "
                             f"below it. Place {v} {labels.LANDMARK_PLACES[v]}.")
        if h < -120.0:
            raise InputError(f"{v} lies {-h:.0f} mm below the hepatic-vein confluence (IVC); that is not the portal "
                             f"bifurcation. Place {v} {labels.LANDMARK_PLACES[v]}.")
    return warnings


# ------------------------------------------------------------------------------------------- mapping

def liver_points(mask: sitk.Image) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Nonzero voxels of a mask: their [z, y, x] index arrays and LPS mm centres as float32 (n, 3)."""
    arr = sitk.GetArrayViewFromImage(mask)
    zs = np.flatnonzero(arr.any(axis=(1, 2)))
    if zs.size == 0:
        return tuple(np.zeros(0, np.intp) for _ in range(3)), np.zeros((0, 3), np.float32)
    sub = arr[zs[0]:zs[-1] + 1]  # nonzero() on the slab holding the mask only
    zyx = np.nonzero(sub)
    zyx = (zyx[0] + zs[0], zyx[1], zyx[2])
    m = (geometry.direction_matrix(mask) * np.asarray(mask.GetSpacing(), dtype=float)[None, :]).astype(np.float32)
    origin = np.asarray(mask.GetOrigin(), dtype=np.float32)
    ijk = [zyx[2].astype(np.float32), zyx[1].astype(np.float32), zyx[0].astype(np.float32)]
    pts = np.empty((zyx[0].size, 3), dtype=np.float32)
    for axis in range(3):  # elementwise, not BLAS: predictable on a loaded 2-core machine
        col = pts[:, axis]
        np.multiply(ijk[0], m[axis, 0], out=col)
        col += m[axis, 1] * ijk[1]
        col += m[axis, 2] * ijk[2]
        col += origin[axis]
    return zyx, pts


def _lerp_clamped(h: np.ndarray, h0: float, v0: float, h1: float, v1: float) -> np.ndarray:
    if abs(h1 - h0) < 1e-6:
        return np.full(h.shape, (v0 + v1) / 2.0, dtype=np.float32)
    t = np.clip((h - h0) / (h1 - h0), 0.0, 1.0)
    return (v0 + t * (v1 - v0)).astype(np.float32)


def caudate_frame(frame: LandmarkFrame):
    """(o, f, g, D, h_bottom) of segment I's elliptic cylinder: o, the point of the IVC behind segment I at IVC's height
    (LPS mm); f, g, unit horizontal vectors toward the portal bifurcation B and across to the patient's left; D, the
    horizontal distance from o to B; h_bottom, segment I's lower end (B's height along the axis from IVC).

    o is the IVC axis moved horizontally half-way toward ``IVC_inferior`` (the middle of the retrohepatic IVC that
    segment I lies in front of) when that landmark is given, else the IVC axis. Two clicks on the IVC averaged move
    segment I about 1/√2 as far as one click's error would, and segment I is the segment most sensitive to the IVC
    click (docs/couinaud_geometry.md). With ``axis='ivc'`` the axis runs through both points, so o is IVC itself."""
    o = np.asarray(frame.origin, dtype=float)
    if "IVC_inferior" in frame.radius:
        phi, r = frame.azimuth["IVC_inferior"], frame.radius["IVC_inferior"]
        o = o + 0.5 * r * (np.cos(phi) * frame.e1 + np.sin(phi) * frame.e2)
    b = frame.bifurcation - o
    bh = _horizontal(b, frame.axis)
    dist_b = float(np.linalg.norm(bh))
    f = bh / max(dist_b, 1e-6)
    g = np.cross(frame.axis, f)
    return o, f, g, dist_b, float((frame.bifurcation - frame.origin) @ frame.axis)


def superior_inferior_heights(frame: LandmarkFrame, split_heights: dict[str, float] | None = None) -> dict[str, float]:
    """Height (mm along the axis from IVC) of the superior/inferior border of each sector: 'right_posterior'
    (VII | VI), 'right_anterior' (VIII | V), 'left_lateral' (II | III, and IVa | IVb for nine segments); the
    landmark's height (RPV for the right sectors, LPV for the left) unless `split_heights` gives one."""
    hh = frame.height
    split = {"right_posterior": hh["RPV"], "right_anterior": hh["RPV"], "left_lateral": hh["LPV"]}
    split.update(split_heights or {})
    return split


def split_segment_iv(values: np.ndarray, points_lps: np.ndarray, frame: LandmarkFrame,
                     split_heights: dict[str, float] | None = None) -> np.ndarray:
    """Nine-segment labels from eight-segment ones: the points of IV (label 4) below the left side's superior/inferior
    height (`superior_inferior_heights`' 'left_lateral': the LPV plane, the same that splits II from III) become IVb
    (label 9); those at or above it stay 4 (IVa). Every other label is unchanged. Returns a new array."""
    out = np.array(values, dtype=np.uint8, copy=True)
    iv = np.flatnonzero(out == labels.COUINAUD_IVA)
    if iv.size:
        h, _, _ = cylindrical_coordinates(np.asarray(points_lps, dtype=np.float32)[iv], frame)
        height = np.float32(superior_inferior_heights(frame, split_heights)["left_lateral"])
        out[iv[h < height]] = labels.COUINAUD_IVB
    return out


def plane_labels(points_lps: np.ndarray, frame: LandmarkFrame, border_shift=None,
                 split_heights: dict[str, float] | None = None) -> np.ndarray:
    """Couinaud label (uint8 1..8) of each point (n, 3) in LPS mm by the landmark planes (module docstring).

    border_shift: optional callable (h, r) -> (dR, dM, dL), azimuth shifts (radians, float32 arrays) of the
    RHV, MHV and left (LHV/UP) sector borders at each point's height h and radius r (mm) from the IVC axis;
    used by the vessel-guided method (`VeinBorders`). None = the flat landmark planes.
    split_heights: optional heights (mm along the axis from IVC) of the superior/inferior border per sector:
    keys 'right_posterior' (VII | VI), 'right_anterior' (VIII | V), 'left_lateral' (II | III); a missing key
    keeps the landmark's height (RPV for the right sectors, LPV for the left). Used by the vessel-guided method
    (`portal_split_heights`).
    """
    o_caudate, f, g, dist_b, h_bottom = caudate_frame(frame)
    p = np.asarray(points_lps, dtype=np.float32)
    cols = (p[:, 0], p[:, 1], p[:, 2])

    def project(vector: np.ndarray, subset=slice(None), origin: np.ndarray = frame.origin) -> np.ndarray:
        w = vector.astype(np.float32)
        out = cols[0][subset] * w[0]
        out += cols[1][subset] * w[1]
        out += cols[2][subset] * w[2]
        out -= np.float32(origin @ vector)
        return out

    h = project(frame.axis)
    phi = np.arctan2(project(frame.e2), project(frame.e1))
    phi[phi < 0] += np.float32(2 * np.pi)
    phi[phi >= frame.cut] -= np.float32(2 * np.pi)  # right posterior sector wraps round to < 0
    az, hh = frame.azimuth, frame.height
    if "UP" in az:
        left_border = _lerp_clamped(h, hh["UP"], az["UP"], hh["LHV"], az["LHV"])
    else:
        left_border = np.float32(az["LHV"])
    right_border, mid_border = np.float32(0.0), np.float32(az["MHV"])
    if border_shift is not None:
        x, y = project(frame.e1), project(frame.e2)
        d_r, d_m, d_l = border_shift(h, np.hypot(x, y))
        right_border, mid_border, left_border = right_border + d_r, mid_border + d_m, left_border + d_l
    split = superior_inferior_heights(frame, split_heights)
    out = np.where(h >= np.float32(split["left_lateral"]), np.uint8(2), np.uint8(3))
    out[phi < left_border] = 4
    ant = phi < mid_border
    out[ant] = np.where(h[ant] >= np.float32(split["right_anterior"]), np.uint8(8), np.uint8(5))
    post = phi < right_border
    out[post] = np.where(h[post] >= np.float32(split["right_posterior"]), np.uint8(7), np.uint8(6))
    # segment I: elliptic cylinder between the IVC axis and the portal bifurcation
    cand = np.flatnonzero((h <= 0.0) & (h >= np.float32(h_bottom)))
    u = (project(f, cand, o_caudate) - np.float32(CAUDATE_CENTRE * dist_b)) / np.float32(CAUDATE_ALONG * dist_b)
    v = (project(g, cand, o_caudate) - np.float32(CAUDATE_LEFT * dist_b)) / np.float32(CAUDATE_ACROSS * dist_b)
    out[cand[u * u + v * v <= 1.0]] = 1
    return out


def _summary(values: np.ndarray, voxel_ml: float, segments: int = 8) -> tuple[dict[str, float], dict[str, float]]:
    names = labels.couinaud_names(segments)
    counts = np.bincount(values, minlength=max(names) + 1).astype(float)
    total = max(float(sum(counts[k] for k in names)), 1.0)
    volumes = {name: float(counts[k] * voxel_ml) for k, name in names.items()}
    fractions = {name: float(counts[k] / total) for k, name in names.items()}
    return volumes, fractions


def map_couinaud(liver_mask: sitk.Image, landmarks: dict[str, np.ndarray], vessel_mask: sitk.Image | None = None,
                 method: str = "auto", progress: Progress | None = None, axis: str = "patient",
                 segments: int = 8) -> CouinaudResult:
    """Label every voxel of the liver mask (lesions and vessels inside it included) with Couinaud 1..8 (or 1..9).

    Args:
        liver_mask: liver (nonzero) on any grid; the result has exactly its geometry.
        landmarks: label → LPS mm (IVC, RHV, MHV, LHV, RPV, LPV required; IVC_inferior, UP optional).
        vessel_mask: optional intrahepatic vessels (nonzero; hepatic and portal veins may be mixed) on the liver
            mask's grid.
        method: 'planes' (landmark planes only), 'territories' (planes refined by portal territories of the
            vessel mask; needs it), 'vessels' (sector borders bent along the hepatic veins traced in the vessel
            mask, superior/inferior heights from its portal branches; needs it; what is not found stays the
            landmark plane, with a warning), or 'auto' (the vessel-guided borders when the mask shows all three
            hepatic veins and the portal branches of the right posterior, right anterior and left lateral
            sectors, else planes with a warning naming what is missing; see `choose_method`).
        progress: callback(fraction 0..1, message).
        axis: 'patient' (default: vertical = the patient's S–I axis through IVC) or 'ivc' (the line
            IVC_inferior → IVC; follows a tilted anatomy, but 5 mm of click error tilts it by about 5°).
        segments: 8 (I–VIII) or 9: IV split into IVa (label 4) above and IVb (label 9) below the left side's
            superior/inferior height (`split_segment_iv`); every other voxel keeps its eight-segment label.
    """
    segments = labels.check_segment_count(segments)
    if axis not in AXES:
        raise InputError(f"Unknown axis {axis!r}; choose one of {', '.join(AXES)}.")
    if method not in METHODS:
        raise InputError(f"Unknown Couinaud method {method!r}; choose one of {', '.join(METHODS)}.")
    if method in ("territories", "vessels") and vessel_mask is None:
        raise InputError(f"The {method!r} Couinaud method needs a vessel mask; give one or use method 'planes'.")
    if vessel_mask is not None:
        geometry.require_same_geometry(vessel_mask, liver_mask, "The vessel mask")
    warnings = check_landmarks(landmarks, liver_mask)
    missing = [n for n in labels.OPTIONAL_LANDMARKS if n not in landmarks]
    if progress is not None:
        progress(0.0, "Couinaud: liver voxels")
    zyx, pts = liver_points(liver_mask)
    if pts.shape[0] == 0:
        raise InputError("The liver mask is empty: nothing to divide into Couinaud segments.")
    frame = landmark_frame(landmarks, axis)
    if progress is not None:
        progress(0.3, "Couinaud: landmark planes")
    values = plane_labels(pts, frame)
    used = "planes"
    guidance = None
    split_heights = None  # the superior/inferior heights the labels used (None: the landmarks')
    if method in ("auto", "vessels") and vessel_mask is not None:
        if progress is not None:
            progress(0.5, "Couinaud: tracing hepatic and portal veins")
        guidance = vessel_guidance(liver_mask, pts, vessel_mask, frame, landmarks)
    chosen = choose_method(method, guidance)
    if method == "auto" and guidance is not None and not guidance.complete:
        warnings.append("Couinaud: the vessel mask does not show " + ", ".join(guidance.missing)
                        + "; the landmark planes were used for every border (method 'auto').")
    if chosen == "territories":
        if progress is not None:
            progress(0.6, "Couinaud: portal territories")
        refined, note = portal_territories(liver_mask, pts, values, vessel_mask, frame, landmarks)
        if refined is not None:
            values, used = refined, "territories"
        elif note:
            warnings.append(note)
    elif chosen == "vessels":
        if progress is not None:
            progress(0.7, "Couinaud: vessel-guided borders")
        guided, _guidance, note = vessel_guided_labels(liver_mask, pts, vessel_mask, frame, landmarks, guidance)
        if guided is not None:
            values, used, split_heights = guided, "vessels", guidance.split_heights
        if note:
            warnings.append(note)
    if segments == 9:
        values = split_segment_iv(values, pts, frame, split_heights)
    out = np.zeros(sitk.GetArrayViewFromImage(liver_mask).shape, dtype=np.uint8)
    out[zyx] = values
    image = geometry.copy_geometry(out, liver_mask)
    volumes, fractions = _summary(values, geometry.voxel_volume_ml(liver_mask), segments)
    for name, frac in fractions.items():
        if frac < 0.005:
            warnings.append(f"Couinaud segment {name} holds only {100 * frac:.1f} % of the liver: check the landmarks.")
    if progress is not None:
        progress(1.0, "Couinaud: done")
    return CouinaudResult(image, used, warnings, missing, volumes, fractions,
                          guidance.summary(frame) if guidance is not None else None, segments)


def choose_method(method: str, guidance: VesselGuidance | None = None) -> str:
    """The method 'auto' resolves to: 'vessels' when the vessel mask showed all three hepatic veins and portal
    branches in the right posterior, right anterior and left lateral sectors (`VesselGuidance.complete`),
    else 'planes' (a partial tree, e.g. hepatic and portal veins merged in the mask, bends borders wrongly;
    measured in docs/couinaud_geometry.md). Other methods are returned unchanged."""
    if method != "auto":
        return method
    return "vessels" if guidance is not None and guidance.complete else "planes"


TRUNK_RADIUS_MM = 12.0  # portal voxels this close to the RPV–LPV segment or UP are trunk (they lie on borders)
SEED_RADIUS_MM = 8.0  # vessel voxels this close to a landmark seed the hepatic / portal split
CONFIDENT_MARGIN_MM = 10.0  # portal voxels this far from every plane border keep their plane label as seeds
TERRITORY_BAND_MM = 10.0  # territories may relabel liver voxels this close to a plane border ...
TERRITORY_REACH_MM = 6.0  # ... that lie this close to a labelled portal-vein voxel


def _offsets_13():
    """Half of the 26-neighbourhood (each undirected edge once), as (dz, dy, dx)."""
    out = []
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dz, dy, dx) > (0, 0, 0):
                    out.append((dz, dy, dx))
    return out


def vessel_graph(zyx: np.ndarray, image: sitk.Image):
    """26-connected graph of voxels (n, 3) [z, y, x] with edge lengths in mm (scipy CSR, symmetric)."""
    from scipy import sparse

    n = zyx.shape[0]
    lo = zyx.min(axis=0) - 1
    shape = zyx.max(axis=0) - lo + 2
    lookup = np.full(tuple(int(v) for v in shape), -1, dtype=np.int64)
    local = zyx - lo
    lookup[local[:, 0], local[:, 1], local[:, 2]] = np.arange(n)
    m = geometry.direction_matrix(image) * np.asarray(image.GetSpacing(), dtype=float)[None, :]
    rows, cols, weights = [], [], []
    for dz, dy, dx in _offsets_13():
        nb = lookup[local[:, 0] + dz, local[:, 1] + dy, local[:, 2] + dx]
        ok = nb >= 0
        rows.append(np.flatnonzero(ok))
        cols.append(nb[ok])
        weights.append(np.full(int(ok.sum()), float(np.linalg.norm(m @ np.array([dx, dy, dz], float)))))
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    w = np.concatenate(weights)
    g = sparse.coo_matrix((w, (r, c)), shape=(n, n)).tocsr()
    return g + g.T


def _nearest_source(graph, seeds: np.ndarray):
    """Index of the geodesically nearest seed for each node (-1 when unreachable) and the distance (mm)."""
    from scipy.sparse import csgraph

    if seeds.size == 0:
        return np.full(graph.shape[0], -1), np.full(graph.shape[0], np.inf)
    dist, _pred, src = csgraph.dijkstra(graph, directed=False, indices=seeds, min_only=True, return_predecessors=True)
    return np.where(np.isfinite(dist), src, -1), dist


def _seed_nodes(points: np.ndarray, target: np.ndarray, radius: float, fallback: float = 15.0) -> np.ndarray:
    d = np.sqrt(((points - target.astype(np.float32)) ** 2).sum(axis=1))
    near = np.flatnonzero(d <= radius)
    if near.size == 0 and d.size and d.min() <= fallback:
        near = np.array([int(np.argmin(d))])
    return near


def _distance_to_segment(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = (b - a).astype(np.float32)
    t = np.clip(((points - a.astype(np.float32)) @ ab) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
    closest = a.astype(np.float32) + t[:, None] * ab[None, :]
    return np.sqrt(((points - closest) ** 2).sum(axis=1))


def cylindrical_coordinates(points_lps: np.ndarray, frame: LandmarkFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Height along the IVC axis (mm), distance from it (mm) and azimuth (radians, in (-π, π], RHV = 0) of LPS points."""
    d = points_lps - frame.origin.astype(np.float32)
    h = d @ frame.axis.astype(np.float32)
    x = d @ frame.e1.astype(np.float32)
    y = d @ frame.e2.astype(np.float32)
    return h, np.hypot(x, y), np.arctan2(y, x)


def border_margin(points_lps: np.ndarray, frame: LandmarkFrame) -> np.ndarray:
    """Approximate distance (mm) from each point to the nearest landmark plane border (sector or portal)."""
    h, r, phi = cylindrical_coordinates(points_lps, frame)
    az, hh = frame.azimuth, frame.height
    borders = [0.0, az["MHV"], az["LHV"]] + ([az["UP"]] if "UP" in az else []) + [frame.cut]
    margin = np.full(points_lps.shape[0], np.inf, dtype=np.float32)
    for b in borders:
        diff = np.abs((phi - np.float32(b) + np.pi) % (2 * np.pi) - np.pi)
        margin = np.minimum(margin, np.where(diff < np.pi / 2, r * np.sin(diff), r))
    margin = np.minimum(margin, np.minimum(np.abs(h - hh["RPV"]), np.abs(h - hh["LPV"])))
    return margin


def portal_territories(liver_mask: sitk.Image, liver_pts: np.ndarray, plane_values: np.ndarray, vessel_mask: sitk.Image,
                       frame: LandmarkFrame, landmarks: dict[str, np.ndarray]):
    """Refine plane labels by portal territories; returns (labels for the liver voxels, note) or (None, note).

    1. Vessel voxels inside the liver form a 26-connected graph (edge lengths in mm).
    2. Hepatic or portal: each vessel voxel joins the geodesically nearest landmark (`vessel_owners`: RHV,
       MHV, LHV, IVC vs RPV, LPV, UP). Hepatic veins run on segment borders, so they are not used further.
    3. Portal trunk voxels (within `TRUNK_RADIUS_MM` of the RPV–LPV segment or of UP) lie on borders too and
       are dropped; the other portal voxels at least `CONFIDENT_MARGIN_MM` from every plane border keep
       their plane label as seeds, and every remaining portal voxel takes the label of the geodesically
       nearest seed along the tree (so a branch that crosses a plane keeps its segment).
    4. A liver voxel within `TERRITORY_BAND_MM` of a plane border and within `TERRITORY_REACH_MM` of a
       labelled portal voxel takes that voxel's label; all others, and segment I, keep the plane label.
       (Territories are restricted to the band because unrestricted nearest-branch territories lose whole
       segments where hepatic and portal trees touch in the mask; see docs/couinaud_geometry.md.)
    """
    from scipy.spatial import cKDTree

    owners = vessel_owners(liver_mask, vessel_mask, landmarks)
    if owners is None:
        return None, "Too few vessel voxels inside the liver for portal territories; the landmark planes were used."
    vpts, graph = owners.points, owners.graph
    portal = owners.of(labels.PORTAL_VEIN_LANDMARKS)
    trunk = _distance_to_segment(vpts, np.asarray(landmarks["RPV"]), np.asarray(landmarks["LPV"])) < TRUNK_RADIUS_MM
    if "UP" in landmarks:
        trunk |= np.sqrt(((vpts - np.asarray(landmarks["UP"], np.float32)) ** 2).sum(1)) < TRUNK_RADIUS_MM
    use = portal & ~trunk
    if use.sum() < 50:
        return None, "Too few portal-vein voxels found from the landmarks; the landmark planes were used."
    idx_use = np.flatnonzero(use)
    sub = graph[idx_use][:, idx_use]
    ppts = vpts[idx_use]
    plane = plane_labels(ppts, frame)
    seeds = np.flatnonzero((border_margin(ppts, frame) >= CONFIDENT_MARGIN_MM) & (plane != 1))
    src, _ = _nearest_source(sub, seeds)
    lab = np.where(src >= 0, plane[np.maximum(src, 0)], plane)
    keep = lab != 1
    tree = cKDTree(ppts[keep])
    near_border = np.flatnonzero(border_margin(liver_pts, frame) < TERRITORY_BAND_MM)
    dist, nearest = tree.query(liver_pts[near_border], k=1, distance_upper_bound=TERRITORY_REACH_MM, workers=-1)
    values = plane_values.copy()
    hit = np.isfinite(dist)
    values[near_border[hit]] = lab[keep][nearest[hit]]
    values[plane_values == 1] = 1
    return values, ""


# ------------------------------------------------------------------------------------ localization

def localize_lesions(lesion_labels: sitk.Image, couinaud_labels: sitk.Image,
                     landmarks: dict[str, np.ndarray], segments: int = 8) -> list[dict]:
    """Where each lesion lies: Couinaud segment shares and distances to the vessel landmarks.

    Args:
        lesion_labels: lesion instances (0 background, 1..n), the Couinaud map's geometry.
        couinaud_labels: 0 outside the liver, 1..8 = I..VIII; with segments=9 also 9 (4 = IVa, 9 = IVb).
        landmarks: label → LPS mm.
        segments: 8 or 9, the segments of `couinaud_labels` (`CouinaudResult.segments`); a nine-segment map
            (label 9 present) read as eight segments raises InputError.

    Returns one dict per lesion id, ascending:
        id; segment_fractions: "I".."VIII" (I, II, III, IVa, IVb, V..VIII for nine) → share of the lesion's voxels
        inside the liver (a key for every segment, summing to 1; all 0 when no voxel lies in the liver); main_segment: the largest share (None if none);
        segments: segments with a share ≥ 5 % (`SEGMENT_MIN_FRACTION`), largest first;
        distance_hepatic_vein_landmark_mm / nearest_hepatic_vein_landmark: the smallest distance from the
        lesion's surface (its nearest voxel centre; 0 when the landmark lies inside it) to RHV, MHV or LHV;
        distance_portal_vein_landmark_mm / nearest_portal_vein_landmark: the same for RPV, LPV, UP.
        voxels_outside_liver: lesion voxels with no Couinaud label.
    """
    geometry.require_same_geometry(lesion_labels, couinaud_labels, "The lesion label map")
    seg_names = labels.couinaud_names(segments)
    les = sitk.GetArrayViewFromImage(lesion_labels)
    cou = sitk.GetArrayViewFromImage(couinaud_labels)
    zyx = np.nonzero(les)
    ids = les[zyx].astype(np.int64)
    segs = cou[zyx].astype(np.int64)
    if ids.size == 0:
        return []
    unknown = sorted(set(np.unique(segs).tolist()) - set(seg_names) - {0})
    if unknown:
        raise InputError(f"The Couinaud map holds labels {unknown} that are not {segments} segments' labels "
                         f"({sorted(seg_names)}): localize with the segment count it was made with.")
    order = np.argsort(ids, kind="stable")
    ids, segs = ids[order], segs[order]
    zyx_sorted = np.stack([a[order] for a in zyx], axis=1)
    bounds = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [ids.size]])
    pts_all = geometry.voxel_centers_lps(lesion_labels, zyx_sorted)
    label_index = _lesion_label_index(lesion_labels)
    rows = []
    for s, e in zip(starts, stops):
        lesion_id = int(ids[s])
        counts = np.bincount(segs[s:e], minlength=max(seg_names) + 1).astype(float)
        total = float(sum(counts[k] for k in seg_names))
        fractions = {name: (float(counts[k] / total) if total else 0.0) for k, name in seg_names.items()}
        listed = sorted((n for n, f in fractions.items() if f >= SEGMENT_MIN_FRACTION), key=lambda n: -fractions[n])
        row = {
            "id": lesion_id,
            "segment_fractions": fractions,
            "main_segment": max(fractions, key=fractions.get) if total else None,
            "segments": listed,
            "voxels_outside_liver": int((segs[s:e] == 0).sum()),
        }
        pts = pts_all[s:e]
        for kind, names in (("hepatic", labels.HEPATIC_VEIN_LANDMARKS), ("portal", labels.PORTAL_VEIN_LANDMARKS)):
            best_name, best = None, None
            for name in names:
                if name not in landmarks:
                    continue
                dist = _distance_to_lesion(np.asarray(landmarks[name], float), pts, lesion_labels, label_index, lesion_id)
                if best is None or dist < best:
                    best_name, best = name, dist
            row[f"distance_{kind}_vein_landmark_mm"] = None if best is None else round(float(best), 2)
            row[f"nearest_{kind}_vein_landmark"] = best_name
        rows.append(row)
    return rows


def _lesion_label_index(lesion_labels: sitk.Image):
    return sitk.GetArrayViewFromImage(lesion_labels)


def _distance_to_lesion(point: np.ndarray, lesion_pts: np.ndarray, lesion_labels: sitk.Image, arr, lesion_id: int) -> float:
    """Distance (mm) from a point to the nearest voxel centre of a lesion; 0 when the point's voxel is in it."""
    idx = np.round(geometry.lps_to_index(lesion_labels, point)).astype(int)
    size = np.asarray(lesion_labels.GetSize())
    if np.all(idx >= 0) and np.all(idx < size) and int(arr[idx[2], idx[1], idx[0]]) == lesion_id:
        return 0.0
    return float(np.sqrt(((lesion_pts - point) ** 2).sum(axis=1).min()))


# ------------------------------------------------------------------------------ vessel-guided borders

VEIN_WEDGE_DEG = 45.0  # traced vein voxels lie within this azimuth of their landmark (and within half the gap to the next)
VEIN_MIN_RADIUS_MM = 8.0  # vein voxels closer to the IVC axis are IVC / confluence, not a border
VEIN_MIN_ML = 1.0  # less traced volume than this for a vein: its border stays the landmark plane
PROFILE_BIN_MM = 5.0  # radial bins of the border profile ...
PROFILE_BIN_MIN_ML = 0.06  # ... each needing this much traced vein to count (60 mm³: ~5 mm of a 2 mm-radius vein)
PROFILE_SIGMA_MM = 10.0  # smoothing of the profile along the radius
BORDER_MAX_DEG = 25.0  # largest shift of a border from its landmark plane
PORTAL_MIN_ML = 0.3  # portal volume a sector needs for its own superior/inferior height
SPLIT_MAX_SHIFT_MM = 30.0  # largest move of a sector's superior/inferior height from the landmark's
SPLIT_SECTORS = {"right_posterior": (6, 7), "right_anterior": (5, 8), "left_lateral": (3, 2)}


class VeinBorders:
    """Azimuth shift of each hepatic sector border as a smooth function of the radius from the IVC axis.

    For each vein (RHV, MHV, LHV) with at least `VEIN_MIN_ML` traced: the median azimuth offset of its voxels
    from the landmark plane in 5 mm radial bins (bins with at least `PROFILE_BIN_MIN_ML` of vein), linearly
    interpolated across gaps and held constant beyond the traced range, smoothed (Gaussian σ
    `PROFILE_SIGMA_MM`) and clipped to ±`BORDER_MAX_DEG`. The profile does not vary with height: a vein runs
    from the confluence outward and downward along its border sheet, so it samples each radius at one height,
    and the border is taken to keep that radius profile above and below: the vein's course gives no height
    at which its shift should fade back to the plane. Calling it with arrays h, r (mm)
    gives (dR, dM, dL) in radians (float32; 0 for a vein without a profile).
    """

    def __init__(self, vein_points: dict[str, np.ndarray], voxel_ml: float, r_max: float):
        from scipy import ndimage

        self.n_bins = int(np.ceil(max(r_max, PROFILE_BIN_MM) / PROFILE_BIN_MM)) + 2
        self.profiles: dict[str, np.ndarray] = {}
        limit = np.radians(BORDER_MAX_DEG)
        for name, pts in vein_points.items():
            if pts.shape[0] * voxel_ml < VEIN_MIN_ML:
                continue
            bins = np.clip((pts[:, 1] / PROFILE_BIN_MM).astype(int), 0, self.n_bins - 1)
            order = np.argsort(bins, kind="stable")
            bins, offsets = bins[order], pts[order, 2]
            edges = np.flatnonzero(np.diff(bins)) + 1
            centres, medians = [], []
            for chunk_bins, chunk in zip(np.split(bins, edges), np.split(offsets, edges)):
                if chunk.size * voxel_ml >= PROFILE_BIN_MIN_ML:
                    centres.append(chunk_bins[0])
                    medians.append(float(np.median(chunk)))
            if not centres:
                continue
            profile = np.interp(np.arange(self.n_bins), centres, medians)
            profile = ndimage.gaussian_filter1d(profile, PROFILE_SIGMA_MM / PROFILE_BIN_MM, mode="nearest")
            self.profiles[name] = np.clip(profile, -limit, limit).astype(np.float32)

    def __call__(self, h: np.ndarray, r: np.ndarray):
        ir = np.clip((r / PROFILE_BIN_MM).astype(np.int64), 0, self.n_bins - 1)
        zero = np.float32(0.0)
        return tuple(self.profiles[n][ir] if n in self.profiles else zero for n in labels.HEPATIC_VEIN_LANDMARKS)


@dataclass
class VesselOwners:
    """Vessel voxels inside the liver and the landmark each belongs to (geodesically nearest seed).

    points: (n, 3) float32 LPS mm; names: the landmark names used as seeds; owner: (n,) index into names,
    -1 where unreached; voxel_ml: volume of one voxel; graph: the 26-connected vessel graph (`vessel_graph`).
    """

    points: np.ndarray
    names: list[str]
    owner: np.ndarray
    voxel_ml: float
    graph: object = None

    def of(self, names) -> np.ndarray:
        """Boolean mask of the voxels owned by any of `names`."""
        idx = [self.names.index(n) for n in names if n in self.names]
        return np.isin(self.owner, idx) if idx else np.zeros(self.owner.shape, bool)


def vessel_owners(liver_mask: sitk.Image, vessel_mask: sitk.Image, landmarks: dict[str, np.ndarray]) -> VesselOwners | None:
    """Split a mixed vessel mask by landmark: each vessel voxel in the liver joins the geodesically nearest
    landmark seed (vessel voxels within `SEED_RADIUS_MM`) among RHV, MHV, LHV, IVC (hepatic) and RPV, LPV, UP
    (portal) along the 26-connected vessel graph. None when the liver holds fewer than 50 vessel voxels."""
    liver_arr = sitk.GetArrayViewFromImage(liver_mask) != 0
    vessel_arr = sitk.GetArrayViewFromImage(vessel_mask) != 0
    vz = np.argwhere(vessel_arr & liver_arr)
    if vz.shape[0] < 50:
        return None
    vpts = geometry.voxel_centers_lps(liver_mask, vz).astype(np.float32)
    graph = vessel_graph(vz, liver_mask)
    names = [n for n in ("RHV", "MHV", "LHV", "IVC", "RPV", "LPV", "UP") if n in landmarks]
    seeds, owner = [], []
    for i, name in enumerate(names):
        nodes = _seed_nodes(vpts, np.asarray(landmarks[name]), SEED_RADIUS_MM)
        seeds.append(nodes)
        owner.append(np.full(nodes.size, i))
    seeds_all, first = np.unique(np.concatenate(seeds), return_index=True)
    owner_all = np.concatenate(owner)[first]
    src, _ = _nearest_source(graph, seeds_all)
    lookup = np.full(vpts.shape[0], -1, dtype=np.int64)
    lookup[seeds_all] = owner_all
    who = np.where(src >= 0, lookup[np.maximum(src, 0)], -1)
    return VesselOwners(vpts, names, who, geometry.voxel_volume_ml(liver_mask), graph)


def trace_hepatic_veins(owners: VesselOwners, frame: LandmarkFrame) -> dict[str, np.ndarray]:
    """Hepatic-vein voxels of each vein: name → (n, 3) float32 of (height mm, radius mm, azimuth offset rad).

    A vein keeps the voxels it owns (`vessel_owners`) at least `VEIN_MIN_RADIUS_MM` from the IVC axis whose
    azimuth lies within `VEIN_WEDGE_DEG` of the landmark's and within half the angular gap to the neighbouring
    veins (a branch wandering into the next sector is dropped).
    """
    h, r, phi = cylindrical_coordinates(owners.points, frame)
    az = frame.azimuth
    gaps = {"RHV": min(az["MHV"], 2 * np.pi - frame.cut), "MHV": min(az["MHV"], az["LHV"] - az["MHV"]),
            "LHV": min(az["LHV"] - az["MHV"], frame.cut - az["LHV"])}
    out = {}
    for name in labels.HEPATIC_VEIN_LANDMARKS:
        if name not in owners.names:
            continue
        off = (phi - np.float32(az[name]) + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)
        wedge = min(np.radians(VEIN_WEDGE_DEG), 0.5 * gaps[name])
        keep = owners.of([name]) & (r >= VEIN_MIN_RADIUS_MM) & (np.abs(off) <= wedge)
        out[name] = np.stack([h[keep], r[keep], off[keep]], axis=1).astype(np.float32)
    return out


def portal_split_heights(owners: VesselOwners, frame: LandmarkFrame,
                         border_shift=None) -> tuple[dict[str, float], dict[str, float]]:
    """Height (mm along the axis from IVC) of the superior/inferior border in each sector, from the portal veins.

    The sectoral portal branches run in the transverse (portal) scissura and give off one segmental branch
    upward and one downward, so the portal voxels of a sector lie about its superior/inferior border: the
    border is put at the median height of the portal voxels (owned by RPV, LPV or UP) that the (bent) sector
    borders place in that sector. Sectors with less than `PORTAL_MIN_ML` of portal vein are left out (they
    keep the landmark height); a height is kept within ±`SPLIT_MAX_SHIFT_MM` of the landmark's.
    Returns (sector → height, sector → portal volume in ml).
    """
    portal = owners.points[owners.of(labels.PORTAL_VEIN_LANDMARKS)]
    heights: dict[str, float] = {}
    volumes = {key: 0.0 for key in SPLIT_SECTORS}
    if portal.shape[0] == 0:
        return heights, volumes
    h, _, _ = cylindrical_coordinates(portal, frame)
    lab = plane_labels(portal, frame, border_shift)
    for key, segs in SPLIT_SECTORS.items():
        sel = np.isin(lab, segs)
        volumes[key] = float(sel.sum() * owners.voxel_ml)
        if volumes[key] < PORTAL_MIN_ML:
            continue
        ref = frame.height["LPV" if key == "left_lateral" else "RPV"]
        heights[key] = float(np.clip(np.median(h[sel]), ref - SPLIT_MAX_SHIFT_MM, ref + SPLIT_MAX_SHIFT_MM))
    return heights, volumes


@dataclass
class VesselGuidance:
    """What the vessel mask gave: sector border profiles, superior/inferior heights, and how complete it is.

    vein_ml: traced volume per hepatic vein (ml); borders: `VeinBorders`; split_heights: sector →
    height (mm), see `portal_split_heights`; portal_ml: portal volume per sector (ml); missing: what was not
    found (human-readable), empty when every vein and every sector's portal branches were found.
    """

    vein_ml: dict[str, float]
    borders: VeinBorders
    split_heights: dict[str, float]
    portal_ml: dict[str, float]
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self, frame: LandmarkFrame) -> dict:
        """JSON-ready: traced vein volumes (ml), portal volume per sector (ml), the superior/inferior heights
        (mm above the IVC landmark along the axis) from the portal branches next to the landmark heights,
        each vein's largest border shift (degrees), and what was missing."""
        landmark_height = {k: frame.height["LPV" if k == "left_lateral" else "RPV"] for k in SPLIT_SECTORS}
        return {
            "complete": self.complete,
            "hepatic_vein_ml": {k: round(v, 3) for k, v in self.vein_ml.items()},
            "portal_ml": {k: round(v, 3) for k, v in self.portal_ml.items()},
            "split_height_mm": {k: round(v, 1) for k, v in self.split_heights.items()},
            "landmark_split_height_mm": {k: round(v, 1) for k, v in landmark_height.items()},
            "max_border_shift_deg": {k: round(float(np.degrees(np.abs(v).max())), 1)
                                     for k, v in self.borders.profiles.items()},
            "missing": list(self.missing),
        }


def vessel_guidance(liver_mask: sitk.Image, liver_pts: np.ndarray, vessel_mask: sitk.Image, frame: LandmarkFrame,
                    landmarks: dict[str, np.ndarray]) -> VesselGuidance | None:
    """Trace the hepatic veins and the portal branches of a vessel mask; None when it holds too few voxels."""
    owners = vessel_owners(liver_mask, vessel_mask, landmarks)
    if owners is None:
        return None
    veins = trace_hepatic_veins(owners, frame)
    _, r, _ = cylindrical_coordinates(liver_pts, frame)
    borders = VeinBorders(veins, owners.voxel_ml, float(r.max()) if r.size else 0.0)
    heights, portal_ml = portal_split_heights(owners, frame, borders)
    vein_ml = {n: float(v.shape[0] * owners.voxel_ml) for n, v in veins.items()}
    missing = [f"{n} (traced {vein_ml.get(n, 0.0):.2f} ml)" for n in labels.HEPATIC_VEIN_LANDMARKS
               if n not in borders.profiles]
    missing += [f"portal branches of the {k.replace('_', ' ')} sector ({portal_ml[k]:.2f} ml)"
                for k in SPLIT_SECTORS if k not in heights]
    return VesselGuidance(vein_ml, borders, heights, portal_ml, missing)


def vessel_guided_labels(liver_mask: sitk.Image, liver_pts: np.ndarray, vessel_mask: sitk.Image,
                         frame: LandmarkFrame, landmarks: dict[str, np.ndarray], guidance: VesselGuidance | None = None):
    """Labels with sector borders bent along the traced hepatic veins and superior/inferior heights from the
    portal branches: (labels, guidance, note). Returns (None, guidance, note) when nothing usable was traced;
    what was traced is used, the rest stays the landmark planes. Segment I stays as in `plane_labels`."""
    if guidance is None:
        guidance = vessel_guidance(liver_mask, liver_pts, vessel_mask, frame, landmarks)
    if guidance is None or (not guidance.borders.profiles and not guidance.split_heights):
        return None, guidance, ("Too few hepatic-vein voxels and portal-vein voxels traced from the landmarks in the "
                                "vessel mask; the landmark planes were used.")
    note = ""
    if guidance.missing:
        note = ("Vessel-guided Couinaud borders: not found in the vessel mask: " + ", ".join(guidance.missing)
                + "; the landmark planes were used there.")
    return plane_labels(liver_pts, frame, guidance.borders, guidance.split_heights), guidance, note
