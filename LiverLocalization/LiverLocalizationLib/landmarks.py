"""Landmarks proposed from the CT: the IVC, the hepatic veins and the portal bifurcation found by anatomy.

`propose_landmarks(ct, liver_mask)` returns a `ProposedLandmarks`: for each of the eight landmark names either a
point (LPS mm) with a confidence (0-1) and a one-line reason, or the reason it was not found. Nothing is guessed
silently: a landmark whose structure the image does not show is left out, and the Couinaud mapping then says
what it cannot compute.

All work is on a working grid of about 2 mm, axis-aligned with LPS (array axes z = S, y = P, x = L), that covers
the liver's box plus a margin; so "right" is a smaller x, "anterior" a smaller y, "up" a larger z whatever the
CT's own direction matrix. Steps:

1. Parenchyma level: median and robust sd (1.4826 MAD) of the smoothed HU inside the eroded liver.
2. IVC (`track_ivc`): in each axial slice, round blobs of blood-like tissue (not liver, HU from the parenchyma
   minus 2.5 sd upwards, under bone) scored by their radius and by how much of a ring round them is liver (the
   IVC lies in the liver's dorsal groove; the aorta, as round and brighter, touches little liver); the best
   vertically continuous chain of blobs (dynamic programming, at most 5 mm sideways per slice) is the IVC.
   `IVC` lies on it where the liver stops wrapping it at the top (the hepatic-vein confluence), `IVC_inferior`
   where it stops at the bottom (the lower end of the caudate).
3. Portal vein (`find_portal`): voxels brighter than the parenchyma by `k` sd inside the liver dilated by 10 mm,
   away from the IVC and from the top of the liver; the thickest part in front of the IVC is the hilum.
   `RPV` and `LPV` are the middles of its intrahepatic voxels right of the IVC axis (by 25 mm) and left of it.
4. `UP`: the most anterior fifth of the left portal part (not proposed when it falls within 10 mm of the LPV).
5. Hepatic veins (`find_hepatic_veins`): bright voxels in the liver in the cone round the IVC above the portal vein,
   an azimuth histogram about the IVC axis weighted by vessel thickness; its three strongest peaks are RHV, MHV, LHV
   in their order from the patient's right to the left, each point about 4 cm out along its vein. Fewer than
   three peaks (two veins merged, poor enhancement): none is named, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError
from .labels import LANDMARK_NAMES

Progress = Callable[[float, str], None]

WORK_SPACING_MM = 2.0
MARGIN_MM = 25.0  # the working grid covers the liver's box plus this: the IVC and the hilum lie at its surface


@dataclass(frozen=True)
class ProposedLandmarks:
    """Landmarks proposed from a CT.

    points: label → point in LPS mm, for the landmarks found.
    confidence: label → 0..1 (found landmarks only): how clearly the image showed the structure.
    reasons: label → one line saying what the point was placed on.
    missing: label → one line saying why the landmark was not proposed.
    """

    points: dict[str, np.ndarray] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def ordered_points(self) -> dict[str, np.ndarray]:
        """The found points in the usual landmark order (`labels.LANDMARK_NAMES`)."""
        return {k: self.points[k] for k in LANDMARK_NAMES if k in self.points}

    def descriptions(self) -> dict[str, str]:
        """label → 'confidence 0.83: reason', the text a markups control point's description holds."""
        return {k: f"proposed, confidence {self.confidence[k]:.2f}: {self.reasons[k]}" for k in self.points}

    def summary_lines(self) -> list[str]:
        """One line per landmark, found or missing, in the usual order."""
        lines = []
        for k in LANDMARK_NAMES:
            if k in self.points:
                p = self.points[k]
                lines.append(f"{k}: LPS ({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f}) mm, confidence {self.confidence[k]:.2f}: "
                             f"{self.reasons[k]}")
            elif k in self.missing:
                lines.append(f"{k}: not found: {self.missing[k]}")
        return lines


# ------------------------------------------------------------------------ working grid

@dataclass
class WorkGrid:
    """The liver's neighbourhood on an LPS-aligned grid: smoothed HU and liver mask as (z, y, x) arrays.

    origin: LPS mm of voxel (0, 0, 0); spacing: mm, the same on every axis."""

    hu: np.ndarray
    liver: np.ndarray
    origin: np.ndarray
    spacing: float

    def to_lps(self, zyx) -> np.ndarray:
        """LPS mm of (z, y, x) voxel coordinates (fractional allowed), one row per point."""
        zyx = np.atleast_2d(np.asarray(zyx, dtype=float))
        return self.origin[None] + zyx[:, ::-1] * self.spacing

    def to_zyx(self, lps) -> np.ndarray:
        """(z, y, x) fractional voxel coordinates of LPS points, one row per point."""
        lps = np.atleast_2d(np.asarray(lps, dtype=float))
        return ((lps - self.origin[None]) / self.spacing)[:, ::-1]


def _physical_box(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """LPS mm corners (low, high) of the axis-aligned box round a mask's nonzero voxels."""
    from .liver import mask_bounding_box

    start, size = mask_bounding_box(mask)
    corners = np.array([[start[0] + i * (size[0] - 1), start[1] + j * (size[1] - 1), start[2] + k * (size[2] - 1)]
                        for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    pts = np.array([mask.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return pts.min(axis=0), pts.max(axis=0)


def work_grid(ct: sitk.Image, liver_mask: sitk.Image, spacing_mm: float = WORK_SPACING_MM,
              margin_mm: float = MARGIN_MM) -> WorkGrid:
    """Resample the CT (smoothed by a Gaussian of half the working spacing first, against aliasing) and the liver
    mask onto an LPS-aligned grid of `spacing_mm` covering the liver's box plus `margin_mm`; outside the CT is
    -1024 HU (air). Why: 2 mm voxels keep the IVC (20-25 mm across) and the portal vein (12-16 mm) several voxels
    thick while a 512×512×130 CT shrinks about 30-fold, and LPS-aligned axes make "right", "anterior" and "up"
    array directions."""
    lo, hi = _physical_box(liver_mask)
    lo, hi = lo - margin_mm, hi + margin_mm
    size = np.maximum(np.ceil((hi - lo) / spacing_mm).astype(int) + 1, 1)
    ct_f = sitk.Cast(ct, sitk.sitkFloat32)
    if min(ct.GetSpacing()) < spacing_mm / 2:
        ct_f = sitk.SmoothingRecursiveGaussian(ct_f, spacing_mm / 2)
    ref = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    ref.SetOrigin(lo.tolist())
    ref.SetSpacing([spacing_mm] * 3)
    hu = sitk.Resample(ct_f, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    liver = sitk.Resample(sitk.Cast(liver_mask > 0, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32)
    return WorkGrid(hu=sitk.GetArrayFromImage(hu), liver=sitk.GetArrayFromImage(liver) >= 0.5,
                    origin=np.asarray(lo, dtype=float), spacing=float(spacing_mm))


def parenchyma_level(grid: WorkGrid) -> tuple[float, float]:
    """Median and robust sd (1.4826 × MAD, at least 8 HU) of the HU inside the liver eroded by 4 mm (vessels and
    lesions are a minority there, so the median is the parenchyma's)."""
    core = ndimage.binary_erosion(grid.liver, iterations=max(1, int(round(4.0 / grid.spacing))))
    values = grid.hu[core if core.sum() > 100 else grid.liver]
    if values.size < 50:
        raise InputError("The liver mask is too small to propose landmarks (under 50 voxels of 2 mm).")
    from .tissue_model import parenchyma_statistics

    med, sd = parenchyma_statistics(values)
    return med, max(8.0, sd)


# ------------------------------------------------------------------------ IVC

IVC_MIN_RADIUS_MM = 5.0  # an IVC cross-section holds a disc at least this wide (it is 20-25 mm across, flattened 12)
IVC_MAX_RADIUS_MM = 18.0  # ... and none wider than this: a larger blood-like blob is a cavity or a uniform region
IVC_STEP_MM = 5.0  # the IVC moves at most this much sideways between neighbouring 2 mm slices
RING_GAP_MM = 4.0  # the ring whose liver share is read lies this far outside a blob's inscribed disc
RING_ANGLES = 32
IVC_LOWEST_FRACTION = 0.3  # the IVC is looked for above this share of the liver's height (the kidney lies lower)
IVC_SCORE_BIAS = 0.15  # a slice adds its candidate's score minus this: weak stretches shorten a chain, not lengthen it
VERTEBRA_MIN_DEPTH_MM = 7.0  # a vertebral body holds bone this deep (a rib about 3 mm)
IVC_FROM_SPINE_MM = {"right": (-10.0, 55.0), "anterior": (20.0, 80.0)}  # the IVC's centre from the vertebral body's
IVC_SPINE_TAPER_MM = 15.0
IVC_MAX_GAP = 3  # slices in a row without a candidate that a chain may bridge (IVC inside the mask, artefacts)
BLOOD_MIN_HU = 40.0  # unenhanced or mixed IVC blood lies above this (fat below 0); bone and contrast pools under 400


@dataclass
class IvcTrack:
    """The IVC found slice by slice: per slice z (index), centre (y, x) in voxels, radius mm and liver wrap 0-1."""

    z: np.ndarray
    yx: np.ndarray
    radius_mm: np.ndarray
    wrap: np.ndarray


def ring_wrap(liver_slice: np.ndarray, y: float, x: float, radius_vox: float) -> float:
    """Share (0-1) of a ring of `RING_ANGLES` points at `radius_vox` round (y, x) that lies in the liver; points
    outside the slice count as not liver."""
    angles = np.linspace(0.0, 2 * np.pi, RING_ANGLES, endpoint=False)
    yy = np.round(y + radius_vox * np.sin(angles)).astype(int)
    xx = np.round(x + radius_vox * np.cos(angles)).astype(int)
    ok = (yy >= 0) & (yy < liver_slice.shape[0]) & (xx >= 0) & (xx < liver_slice.shape[1])
    return float(liver_slice[yy[ok], xx[ok]].sum()) / RING_ANGLES


def spine_centre(grid: WorkGrid) -> np.ndarray | None:
    """(y, x) voxel position of the vertebral bodies' centre: per slice of the liver's height, the deepest point of
    the bone (HU > 200) if it lies at least `VERTEBRA_MIN_DEPTH_MM` inside it (ribs are thinner), median over the
    slices. None when no slice shows such bone (a field of view without the spine)."""
    z_liver = np.flatnonzero(grid.liver.any(axis=(1, 2)))
    found = []
    for z in range(int(z_liver[0]), int(z_liver[-1]) + 1, 2):
        dt = ndimage.distance_transform_edt(grid.hu[z] > 200.0) * grid.spacing
        if dt.max() >= VERTEBRA_MIN_DEPTH_MM:
            found.append(np.unravel_index(int(np.argmax(dt)), dt.shape))
    return np.median(np.array(found, dtype=float), axis=0) if len(found) >= 3 else None


def spine_weight(y: float, x: float, spine_yx: np.ndarray | None, spacing: float) -> float:
    """0-1: how well (y, x) fits the IVC's place relative to the vertebral body, `IVC_FROM_SPINE_MM` (right of
    its centre by `right` mm, in front of it by `anterior` mm), tapering to 0 over `IVC_SPINE_TAPER_MM` outside.
    The aorta lies at the midline just in front of the vertebra, the right kidney far to its right. 1 without
    a spine."""
    if spine_yx is None:
        return 1.0
    right = (spine_yx[1] - x) * spacing
    anterior = (spine_yx[0] - y) * spacing
    (r0, r1), (a0, a1) = IVC_FROM_SPINE_MM["right"], IVC_FROM_SPINE_MM["anterior"]
    outside = max(r0 - right, right - r1, 0.0) + max(a0 - anterior, anterior - a1, 0.0)
    return float(max(0.0, 1.0 - outside / IVC_SPINE_TAPER_MM))


def ivc_candidates(grid: WorkGrid, blood: np.ndarray, z: int, max_candidates: int = 6,
                   spine_yx: np.ndarray | None = None) -> list[tuple]:
    """(y, x, radius mm, wrap, score) of the round blood-like blobs of slice `z`: local maxima of the in-plane
    distance to the blob's edge from `IVC_MIN_RADIUS_MM` to `IVC_MAX_RADIUS_MM`, scored radius (capped at 12 mm) × liver wrap ×
    place, so that a round vessel lying in the liver's dorsal groove scores highest. Place is `spine_weight`, or
    without a spine the posteriority (0 at the slice's most anterior liver row, 1 at its most posterior): the
    portal vein, as round and as wrapped at the hilum, lies 3-5 cm further forward."""
    dt = ndimage.distance_transform_edt(blood[z]) * grid.spacing
    rows = np.flatnonzero(grid.liver[z].any(axis=1))
    if rows.size == 0:
        return []
    peaks = (dt >= IVC_MIN_RADIUS_MM) & (dt <= IVC_MAX_RADIUS_MM) & (dt == ndimage.maximum_filter(dt, size=5))
    out = []
    for y, x in np.argwhere(peaks):
        r = float(dt[y, x])
        wrap = ring_wrap(grid.liver[z], y, x, (r + RING_GAP_MM) / grid.spacing)
        place = spine_weight(y, x, spine_yx, grid.spacing) * float(
            np.clip((y - rows[0]) / max(rows[-1] - rows[0], 1), 0.0, 1.0))
        out.append((float(y), float(x), r, wrap, min(r, 12.0) / 12.0 * wrap * place))
    out.sort(key=lambda c: -c[4])
    return out[:max_candidates]


def track_ivc(grid: WorkGrid, par_med: float, par_sd: float) -> IvcTrack | None:
    """The IVC as the best vertically continuous chain of `ivc_candidates` over the liver's slices (dynamic
    programming: a candidate adds its score minus `IVC_SCORE_BIAS` to the best chain, if positive, ending within
    `IVC_STEP_MM` per slice in one of the `IVC_MAX_GAP` + 1 slices below), above `IVC_LOWEST_FRACTION` of the
    liver's height. None when no slice has a candidate."""
    blood = (grid.hu >= BLOOD_MIN_HU) & (grid.hu < 400.0) & ~grid.liver
    z_liver = np.flatnonzero(grid.liver.any(axis=(1, 2)))
    spine_yx = spine_centre(grid)
    cands: dict[int, list[tuple]] = {}
    z_low = int(z_liver[0] + IVC_LOWEST_FRACTION * (z_liver[-1] - z_liver[0]))
    for z in range(z_low, int(z_liver[-1]) + 1):
        cands[z] = [c for c in ivc_candidates(grid, blood, z, spine_yx=spine_yx) if c[4] > 0.05]
    acc: dict[tuple[int, int], float] = {}
    back: dict[tuple[int, int], tuple[int, int] | None] = {}
    step = IVC_STEP_MM / grid.spacing
    for z in sorted(cands):
        for i, c in enumerate(cands[z]):
            best, arg = 0.0, None
            for dz in range(1, IVC_MAX_GAP + 2):
                for j, d in enumerate(cands.get(z - dz, [])):
                    if np.hypot(c[0] - d[0], c[1] - d[1]) <= step * dz and acc[(z - dz, j)] > best:
                        best, arg = acc[(z - dz, j)], (z - dz, j)
            acc[(z, i)], back[(z, i)] = c[4] - IVC_SCORE_BIAS + best, arg
    if not acc:
        return None
    node = max(acc, key=acc.get)
    chain = []
    while node is not None:
        chain.append((node[0], *cands[node[0]][node[1]][:4]))
        node = back[node]
    chain = np.array(chain[::-1])
    return IvcTrack(z=chain[:, 0].astype(int), yx=chain[:, 1:3], radius_mm=chain[:, 3], wrap=chain[:, 4])


def vessel_voxels(grid: WorkGrid, par_med: float, par_sd: float, k: float = 2.0) -> np.ndarray:
    """Bright vessels: voxels brighter than the parenchyma by `k` robust sd (and by 20 HU at least; under bone)
    inside the liver dilated by 10 mm (the hilum and the IVC lie at its surface)."""
    near = ndimage.binary_dilation(grid.liver, iterations=max(1, int(round(10.0 / grid.spacing))))
    return (grid.hu > par_med + max(k * par_sd, 20.0)) & (grid.hu < 400.0) & near


def confluence_index(grid: WorkGrid, track: IvcTrack, vessels: np.ndarray) -> tuple[int, float]:
    """Index into `track` of the hepatic-vein confluence, and the share of the track's vein contact found there:
    per slice the bright vessel voxels inside the liver within 15 mm outside the IVC's disc (the hepatic veins
    entering it), summed over 5 slices (10 mm); the highest maximum in the track's upper half. Why the veins:
    the IVC landmark stands where the hepatic veins join it, which the top of the liver alone does not show."""
    contact = np.zeros(len(track.z))
    yy, xx = np.mgrid[0:grid.hu.shape[1], 0:grid.hu.shape[2]]
    for i, (z, (y, x), r) in enumerate(zip(track.z, track.yx, track.radius_mm)):
        d = np.hypot(yy - y, xx - x) * grid.spacing
        ring = (d > r + 1.0) & (d <= r + 15.0)
        contact[i] = np.count_nonzero(vessels[z] & grid.liver[z] & ring)
    smooth = np.convolve(contact, np.ones(5), mode="same")
    upper = np.arange(len(track.z)) >= len(track.z) // 2
    i = int(np.argmax(np.where(upper, smooth, -1.0)))
    return i, float(smooth[i] / max(smooth.sum(), 1e-9))


# ------------------------------------------------------------------------ portal vein

PORTAL_MIN_RADIUS_MM = 2.5  # portal trunk and first-order branches are 10-16 mm across; segmental branches thinner
PORTAL_BELOW_CONFLUENCE_MM = (15.0, 110.0)  # the hilum lies this far below the hepatic-vein confluence
PORTAL_ANTERIOR_MM = 15.0  # ... and at least this far in front of the IVC axis
UP_MIN_FROM_LPV_MM = 10.0  # an umbilical portion found closer than this to the LPV is the same branch: not proposed
PORTAL_RIGHT_MM = 25.0  # portal voxels this far right of the IVC axis are the right branch (RPV)
PORTAL_LEFT_MM = 0.0  # ... those left of the axis by this much the left branch (LPV, UP)


@dataclass
class PortalParts:
    """Voxels (z, y, x) of the thick intrahepatic portal vein, split into right and left parts, with the thick
    component's volume (ml) as a measure of how clearly the hilum showed."""

    right: np.ndarray
    left: np.ndarray
    volume_ml: float


def find_portal(grid: WorkGrid, vessels: np.ndarray, ivc_zyx: np.ndarray) -> PortalParts | None:
    """The thick portal vein: bright vessel voxels at least `PORTAL_MIN_RADIUS_MM` inside the vessel mask, in the
    height band `PORTAL_BELOW_CONFLUENCE_MM` below the confluence `ivc_zyx` and `PORTAL_ANTERIOR_MM` in front of the
    IVC; the largest 26-connected component, grown back to the vessel's wall; its voxels in the liver (the trunk
    runs outside it) `PORTAL_RIGHT_MM` or more right of the IVC axis are the right branch, those `PORTAL_LEFT_MM`
    or more left of it the left branch (the bifurcation lies a little right of the axis). None when no thick
    bright vessel lies there."""
    s = grid.spacing
    thick = ndimage.distance_transform_edt(vessels) * s >= PORTAL_MIN_RADIUS_MM
    zz = np.arange(grid.hu.shape[0])[:, None, None]
    yy = np.arange(grid.hu.shape[1])[None, :, None]
    lo, hi = PORTAL_BELOW_CONFLUENCE_MM
    band = ((ivc_zyx[0] - zz) * s >= lo) & ((ivc_zyx[0] - zz) * s <= hi) & ((ivc_zyx[1] - yy) * s >= PORTAL_ANTERIOR_MM)
    thick &= band
    lab, n = ndimage.label(thick, structure=np.ones((3, 3, 3)))
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    comp = lab == (int(np.argmax(sizes)) + 1)
    # the thick voxels are the vessel's core: grow back to the whole vessel, then keep what lies in the liver
    comp = ndimage.binary_dilation(comp, iterations=2, mask=vessels) & grid.liver
    pts = np.argwhere(comp).astype(float)
    if len(pts) < 5:
        return None
    right_of_axis = (ivc_zyx[2] - pts[:, 2]) * s
    right = pts[right_of_axis >= PORTAL_RIGHT_MM]
    left = pts[right_of_axis <= -PORTAL_LEFT_MM]
    return PortalParts(right=right, left=left, volume_ml=float(sizes.max()) * s ** 3 / 1000.0)


# ------------------------------------------------------------------------ hepatic veins

HV_K_SD = 1.0  # hepatic-vein voxels: brighter than the parenchyma by this many robust sd (and 20 HU at least)
HV_RADIUS_MM = (15.0, 60.0)  # the veins are read this far (horizontally) from the IVC axis: past the IVC's wall
HV_ABOVE_MM = 15.0  # ... up to this far above the confluence
HV_DESCENT = 0.6  # ... and down to this many mm per mm outward (+5 mm): the veins descend outward, the portal
#                   branches lie lower (domain.md: RPV/LPV 35-60 mm below the confluence at similar radii)
HV_SMOOTH_DEG = 7.0  # Gaussian smoothing of the azimuth histogram (the veins are 8-12 mm thick at 4-5 cm: ~12°)
HV_MIN_SEPARATION_DEG = 25.0  # two azimuth peaks closer than this are one vein
HV_MIN_PEAK_SHARE = 0.1  # a peak weaker than this share of the strongest is not a vein
HV_HALF_WIDTH_DEG = 12.0  # a vein's voxels lie within this azimuth of its peak
HV_POINT_RADIUS_MM = (32.0, 48.0)  # the point: median of the vein's voxels about 4 cm from the IVC axis (domain.md's
#                                    2-4 cm on the vein; an expert's click on the segment border lies 3-6 cm out)
HV_NAMES = ("RHV", "MHV", "LHV")


@dataclass
class HepaticVeins:
    """Hepatic veins found about the IVC: name → (z, y, x) voxel point, azimuth (degrees, 0 = patient's right, 90 =
    anterior, 180 = left) and peak strength relative to the strongest vein (0-1); `missing` says why none was named."""

    points: dict[str, np.ndarray] = field(default_factory=dict)
    azimuth_deg: dict[str, float] = field(default_factory=dict)
    strength: dict[str, float] = field(default_factory=dict)
    missing: str = ""


def cylindrical(grid: WorkGrid, zyx: np.ndarray, axis_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(height mm above, horizontal radius mm from, azimuth degrees about) a vertical axis through `axis_zyx`, for
    (n, 3) voxel positions; azimuth 0 points to the patient's right, 90 anterior, 180 left, -90 posterior (so the
    hepatic veins, right through front to left, run from about -45 to 160 degrees without a wrap)."""
    s = grid.spacing
    h = (zyx[:, 0] - axis_zyx[0]) * s
    anterior = (axis_zyx[1] - zyx[:, 1]) * s
    right = (axis_zyx[2] - zyx[:, 2]) * s
    return h, np.hypot(right, anterior), np.degrees(np.arctan2(anterior, right))


def azimuth_peaks(azimuth_deg: np.ndarray, weights: np.ndarray, n: int = 3) -> list[tuple[float, float]]:
    """Up to `n` (azimuth degrees, strength) peaks of a weighted azimuth histogram (1° bins from -90 to 200,
    smoothed by `HV_SMOOTH_DEG`), strongest first, each at least `HV_MIN_SEPARATION_DEG` from a stronger one and
    at least `HV_MIN_PEAK_SHARE` of the strongest. Why a histogram: each hepatic vein is a sheet-like fan of
    branches at one azimuth about the IVC (the plane it defines), so its voxels pile up at that angle whatever
    their height and radius."""
    bins = np.clip(np.round(azimuth_deg + 90.0).astype(int), 0, 289)
    hist = np.bincount(bins, weights=weights, minlength=290)[:290]
    smooth = ndimage.gaussian_filter1d(hist, HV_SMOOTH_DEG, mode="constant")
    is_peak = (smooth[1:-1] >= smooth[:-2]) & (smooth[1:-1] > smooth[2:])
    order = sorted(np.flatnonzero(is_peak) + 1, key=lambda j: -smooth[j])
    chosen: list[int] = []
    for j in order:
        if smooth[j] < HV_MIN_PEAK_SHARE * smooth[order[0]]:
            break
        if all(abs(j - q) >= HV_MIN_SEPARATION_DEG for q in chosen):
            chosen.append(int(j))
    top = smooth[order[0]] if order else 1.0
    return [(float(j - 90), float(smooth[j] / top)) for j in chosen[:n]]


def find_hepatic_veins(grid: WorkGrid, par_med: float, par_sd: float, ivc_zyx: np.ndarray) -> HepaticVeins:
    """RHV, MHV and LHV about the IVC at the confluence `ivc_zyx` (voxels): bright voxels (`HV_K_SD`) inside the liver
    in the cone round the IVC where the veins run (`HV_RADIUS_MM` out, from `HV_ABOVE_MM` above the confluence down
    `HV_DESCENT` mm per mm outward), weighted by their thickness (distance to the vessel's edge, up to 4 mm, so
    that the trunks outweigh twigs and noise); the three strongest azimuth peaks (`azimuth_peaks`) are named by
    anatomy in their order from the patient's right through anterior to left: RHV, MHV, LHV. Each point is the
    median of its peak's voxels `HV_POINT_RADIUS_MM` from the axis. Fewer than three peaks: none is named (which
    is which would be a guess)."""
    s = grid.spacing
    bright = vessel_voxels(grid, par_med, par_sd, k=HV_K_SD) & grid.liver
    thick = ndimage.distance_transform_edt(bright) * s
    zyx = np.argwhere(bright)
    h, r, az = cylindrical(grid, zyx.astype(float), ivc_zyx)
    cone = (r >= HV_RADIUS_MM[0]) & (r <= HV_RADIUS_MM[1]) & (h <= HV_ABOVE_MM) & (h >= -HV_DESCENT * r - 5.0)
    if np.count_nonzero(cone) < 20:
        return HepaticVeins(missing="fewer than 20 bright voxels round the IVC above the portal vein (hepatic veins "
                                    "not enhanced or not in the field of view)")
    weights = np.minimum(thick[tuple(zyx[cone].T)], 4.0)
    peaks = azimuth_peaks(az[cone], weights)
    if len(peaks) < 3:
        return HepaticVeins(missing=f"only {len(peaks)} vein direction(s) round the IVC stand out; which vein is "
                                    "which cannot be told")
    out = HepaticVeins()
    band = (r >= HV_POINT_RADIUS_MM[0]) & (r <= HV_POINT_RADIUS_MM[1])
    for name, (a, strength) in zip(HV_NAMES, sorted(peaks)):
        sel = cone & band & (np.abs(az - a) <= HV_HALF_WIDTH_DEG)
        if np.count_nonzero(sel) < 3:
            sel = cone & (np.abs(az - a) <= HV_HALF_WIDTH_DEG)
        out.points[name] = np.median(zyx[sel], axis=0).astype(float)
        out.azimuth_deg[name], out.strength[name] = a, strength
    return out


# ------------------------------------------------------------------------ proposal


def _median_point(grid: WorkGrid, zyx: np.ndarray) -> np.ndarray:
    """LPS mm of the voxel-wise median of (z, y, x) positions."""
    return grid.to_lps(np.median(zyx, axis=0))[0]


def propose_landmarks(ct: sitk.Image, liver_mask: sitk.Image | None = None,
                      progress: Progress | None = None) -> ProposedLandmarks:
    """Landmarks proposed from a contrast-enhanced (portal-venous) CT in HU, with a confidence and reason each.

    Args:
        ct: the CT, any pixel type, spacing and direction.
        liver_mask: liver mask on the CT's grid (nonzero = liver); None: `liver.extract_liver(ct, None)` (the
            right-upper-abdomen heuristic, slower and less reliable).
        progress: called with (fraction 0..1, message).
    Returns a `ProposedLandmarks`; landmarks not found are in `missing` with the reason, never guessed.
    Raises InputError when the liver mask is empty or tiny.
    """
    def report(f: float, msg: str) -> None:
        if progress is not None:
            progress(f, msg)

    if liver_mask is None:
        from .liver import extract_liver

        report(0.0, "finding the liver (no mask given)")
        liver_mask = extract_liver(ct, None)
    report(0.5, "resampling the liver's neighbourhood to 2 mm")
    grid = work_grid(ct, liver_mask)
    par_med, par_sd = parenchyma_level(grid)
    points, confidence, reasons, missing = {}, {}, {}, {}
    report(0.6, "tracking the IVC")
    track = track_ivc(grid, par_med, par_sd)
    if track is None or len(track.z) < 5:
        why = "no round blood-filled tube runs along the liver's dorsal groove over 10 mm or more"
        return ProposedLandmarks(missing={k: why if k.startswith("IVC") else "needs the IVC, not found" for k in
                                          LANDMARK_NAMES})
    length_mm = (track.z[-1] - track.z[0]) * grid.spacing
    wrap = float(np.median(track.wrap))
    vessels = vessel_voxels(grid, par_med, par_sd)
    i_conf, share = confluence_index(grid, track, vessels)
    ivc_zyx = np.array([track.z[i_conf], *track.yx[i_conf]], dtype=float)
    base = float(np.clip(length_mm / 60.0, 0.0, 1.0) * np.clip(wrap / 0.5, 0.0, 1.0))
    points["IVC"] = grid.to_lps(ivc_zyx)[0]
    confidence["IVC"] = round(base * float(np.clip(share / 0.1, 0.3, 1.0)), 2)
    reasons["IVC"] = (f"IVC tracked over {length_mm:.0f} mm in the liver's dorsal groove (median liver wrap "
                      f"{wrap:.2f}); placed where the most hepatic-vein voxels meet it")
    points["IVC_inferior"] = grid.to_lps([track.z[0], *track.yx[0]])[0]
    confidence["IVC_inferior"] = round(0.8 * base, 2)
    reasons["IVC_inferior"] = "lowest point of the tracked IVC where the liver still wraps it (caudate's lower end)"
    report(0.7, "finding the hepatic veins")
    veins = find_hepatic_veins(grid, par_med, par_sd, ivc_zyx)
    for k in HV_NAMES:
        if k in veins.points:
            points[k] = grid.to_lps(veins.points[k])[0]
            confidence[k] = round(base * float(np.clip(veins.strength[k] / 0.3, 0.2, 0.8)), 2)
            reasons[k] = (f"bright vessel fanning out from the IVC at azimuth {veins.azimuth_deg[k]:.0f}° (0 right, "
                          "90 anterior, 180 left), named by its order right to left; median of its voxels "
                          f"{HV_POINT_RADIUS_MM[0]:.0f}-{HV_POINT_RADIUS_MM[1]:.0f} mm from the IVC axis")
        else:
            missing[k] = veins.missing
    report(0.8, "finding the portal bifurcation")
    portal = find_portal(grid, vessels, ivc_zyx)
    if portal is None:
        for k in ("RPV", "LPV", "UP"):
            missing[k] = "no thick bright vessel in front of the IVC below the confluence (hilum not seen)"
    else:
        conf = round(float(np.clip(portal.volume_ml / 4.0, 0.1, 0.6)), 2)
        if len(portal.right) >= 3:
            points["RPV"], confidence["RPV"] = _median_point(grid, portal.right), conf
            reasons["RPV"] = (f"middle of the thick portal vein inside the liver {PORTAL_RIGHT_MM:.0f} mm or more "
                              "right of the IVC axis")
        else:
            missing["RPV"] = "no thick portal branch inside the liver right of the IVC axis"
        if len(portal.left) >= 3:
            points["LPV"], confidence["LPV"] = _median_point(grid, portal.left), conf
            reasons["LPV"] = "middle of the thick portal vein inside the liver left of the IVC axis"
            front = portal.left[portal.left[:, 1] <= np.quantile(portal.left[:, 1], 0.2)]
            up = _median_point(grid, front)
            if np.linalg.norm(up - points["LPV"]) >= UP_MIN_FROM_LPV_MM:
                points["UP"], confidence["UP"] = up, round(0.5 * conf, 2)
                reasons["UP"] = "most anterior fifth of the left portal branch (umbilical portion)"
            else:
                missing["UP"] = (f"the left portal branch seen is too short (its front within {UP_MIN_FROM_LPV_MM:.0f} "
                                 "mm of the LPV) to show the umbilical portion")
        else:
            for k in ("LPV", "UP"):
                missing[k] = "no thick portal branch inside the liver left of the IVC axis"
    report(1.0, "landmarks proposed")
    return ProposedLandmarks(points=points, confidence=confidence, reasons=reasons, missing=missing)


def write_proposed_markups(path, proposed: ProposedLandmarks):
    """Write the found landmarks as a Slicer markups file (LPS, `io.write_markups`), each control point's
    description holding its confidence and reason; the missing ones are not written (the file's points are what
    the user confirms or moves)."""
    from . import io

    return io.write_markups(path, proposed.ordered_points(), descriptions=proposed.descriptions())
