"""Liver extraction without a deep network: EM liver class, seeds from the landmarks, shape and connectivity.

Steps (`extract_liver`):
1. Region of interest: a box of ±`roi_margin_mm` around the landmarks (the whole image without them),
   block-averaged (BinShrink) to a working grid of about `working_spacing_mm`.
2. Parenchyma intensity from the data near the seeds: median and 1.4826 × MAD of the voxels within
   `seed_radius_mm` of the landmarks (they lie on hepatic and portal veins, inside the liver, so most
   voxels around them are parenchyma).
3. EM Gaussian mixture of the region's soft-tissue intensities (K by BIC); the liver class is the
   union of the components whose mean lies within 2 parenchyma sd of the parenchyma intensity; a
   mean-field MRF smooths the two-class posterior (liver / not liver).
4. Erosion by `erosion_mm` cuts thin bridges to heart, spleen, kidney, stomach and IVC; the
   component(s) touching the seed balls are kept; a geodesic dilation inside the liver class undoes
   the erosion; a watershed between markers eroded by `separation_mm` cuts broader necks (pancreas,
   duodenum: `separate_at_necks`); a closing and 3-D plus slice-wise hole filling bring tumours and intrahepatic vessels
   into the liver; hypodense regions at its surface are judged (`dark_regions`), and soft tissue that
   fills a concavity of the mask (a tumour at the surface) joins it (`soft_tissue_in_concavities`).
5. Back on the CT's grid: the working-grid mask is interpolated and its border refined at full
   resolution (voxels within one working voxel of the border follow the liver-class posterior).

Without landmarks the seed is heuristic: the largest liver-class component in the patient's right
upper abdomen, with the parenchyma intensity taken as the mode of the body's soft tissue between
60 and 200 HU (portal-venous liver). That is a fallback: place landmarks for a reliable result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import geometry
from .errors import InputError
from .tissue_model import FLUID_HU, mrf_regularise, parenchyma_statistics, peak_statistics

Progress = Callable[[float, str], None]


EMBEDDED_REACH_MM = 5.0  # how far round a blob `embedded_in_parenchyma` looks for parenchyma


def embedded_in_parenchyma(blob: np.ndarray, parenchyma: np.ndarray, spacing_zyx, min_contact: float = 0.25,
                           min_closure: float = 0.4, reach_mm: float = EMBEDDED_REACH_MM) -> bool:
    """A blob lying in the parenchyma, not on it: at least `min_contact` of its one-voxel shell is parenchyma,
    and parenchyma lies within `reach_mm` of it in at least `min_closure` of 26 directions
    (`geometry.ring_closure`). A cyst that fills the thickness of a thin lobe passes; the gallbladder, stomach
    and bowel fluid beside the liver touch it on one face and do not. blob, parenchyma: bool arrays of one
    shape, with room round the blob for `reach_mm`."""
    if geometry.shell_fraction(blob, parenchyma) < min_contact:
        return False
    dist = ndimage.distance_transform_edt(~blob, sampling=spacing_zyx)
    ring = (dist > 0) & (dist <= reach_mm)
    return geometry.ring_closure(parenchyma.astype(np.float32), ring, blob, spacing_zyx, 0.5,
                                 min_voxels=3) >= min_closure


MEDIAN_ABOVE_NOISE_HU = 20.0  # raw CT: a working grid noisier than this is median-filtered (real CTs' grids: 6-14 HU)


def mask_bounding_box(mask: sitk.Image, margin_voxels=0):
    """Index box (start_xyz, size_xyz) of a mask's nonzero voxels with a margin, clipped to the image.

    margin_voxels: one number for every axis, or one per axis (x, y, z)."""
    arr = sitk.GetArrayViewFromImage(mask)
    size = np.asarray(mask.GetSize())
    nz = arr != 0
    zs = np.flatnonzero(nz.any(axis=(1, 2)))
    if zs.size == 0:
        raise InputError("The liver mask is empty.")
    ys = np.flatnonzero(nz.any(axis=(0, 2)))
    xs = np.flatnonzero(nz.any(axis=(0, 1)))
    lo = np.maximum(np.array([xs[0], ys[0], zs[0]]) - margin_voxels, 0)
    hi = np.minimum(np.array([xs[-1], ys[-1], zs[-1]]) + margin_voxels + 1, size)
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo)


def check_landmarks_inside(ct: sitk.Image, landmarks: dict[str, np.ndarray], tissue_range_hu=(-300.0, 600.0)) -> None:
    """Raise InputError when a landmark lies outside the image or in air / bone far from any soft tissue, or
    when the liver's landmarks lie on the patient's left (`check_landmarks_on_the_right`).

    A landmark is accepted when some voxel within 10 mm of it has soft-tissue intensity (tissue_range_hu).
    """
    arr = sitk.GetArrayViewFromImage(ct)
    size = np.asarray(ct.GetSize())
    spacing = np.asarray(ct.GetSpacing())
    for name, point in landmarks.items():
        p = np.asarray(point, dtype=float)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise InputError(f"Landmark {name} is not a 3-D point ({point!r}).")
        idx = geometry.lps_to_index(ct, p)
        if np.any(idx < -0.5) or np.any(idx > size - 0.5):
            raise InputError(f"Landmark {name} at LPS {np.round(p, 1).tolist()} mm lies outside the CT "
                             f"(index {np.round(idx, 1).tolist()}, size {size.tolist()}); check the markups' "
                             "coordinate system (LPS vs RAS) and that they belong to this CT.")
        r = np.maximum(1, np.round(10.0 / spacing)).astype(int)
        c = np.clip(np.round(idx).astype(int), 0, size - 1)
        lo, hi = np.maximum(c - r, 0), np.minimum(c + r + 1, size)
        block = arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        if not np.any((block > tissue_range_hu[0]) & (block < tissue_range_hu[1])):
            raise InputError(f"Landmark {name} at LPS {np.round(p, 1).tolist()} mm is not in or near soft tissue "
                             "(only air or bone within 10 mm); place it on the liver's vessels.")
    check_landmarks_on_the_right(ct, landmarks)


RIGHT_SIDE_LANDMARKS = ("IVC", "RHV", "RPV")  # about 25, 70 and 40 mm right of the body's midline


def body_midline_x(ct: sitk.Image, height_mm: float, slab_mm: float = 20.0, step_mm: float = 4.0,
                   body_hu: float = -500.0) -> float | None:
    """LPS x (mm) of the body's left-right middle at a height: the median x of the voxels above `body_hu`
    within `slab_mm` of LPS z = `height_mm`, sampled about every `step_mm`. None when the slab holds no body
    voxel, or when the body reaches the image's left or right edge there (a CT cropped round the liver, or a
    field of view narrower than the body: its middle is not the body's)."""
    spacing = np.asarray(ct.GetSpacing())
    steps = np.maximum(1, np.round(step_mm / spacing)).astype(int)
    arr = sitk.GetArrayViewFromImage(ct)[::steps[2], ::steps[1], ::steps[0]]
    points = geometry.voxel_centers_lps(ct, np.argwhere(np.ones(arr.shape, bool)) * steps[::-1])
    near = np.abs(points[:, 2] - height_mm) <= slab_mm
    body = near & (arr.ravel() > body_hu)
    if not body.any():
        return None
    x, edge = points[body, 0], step_mm + float(spacing.max())
    if x.min() <= points[near, 0].min() + edge or x.max() >= points[near, 0].max() - edge:
        return None
    return float(np.median(x))


def check_landmarks_on_the_right(ct: sitk.Image, landmarks: dict[str, np.ndarray]) -> None:
    """Raise InputError when the landmarks that lie right of the midline in every liver (IVC, RHV, RPV) are, on
    average, on the patient's left of the body's middle at their height (`body_midline_x`).

    That is what a markups file read in the wrong coordinate system gives (RAS taken for LPS mirrors the points
    through the scanner's axis) or an image flipped left-right. Nothing is checked with fewer than two of
    those landmarks or without body voxels at their height.
    """
    points = np.array([np.asarray(landmarks[n], dtype=float) for n in RIGHT_SIDE_LANDMARKS if n in landmarks])
    if len(points) < 2:
        return
    mean = points.mean(axis=0)
    midline = body_midline_x(ct, float(mean[2]))
    if midline is None or mean[0] <= midline:  # LPS: x grows toward the patient's left
        return
    names = ", ".join(n for n in RIGHT_SIDE_LANDMARKS if n in landmarks)
    raise InputError(
        f"The landmarks {names} lie on the patient's left, {mean[0] - midline:.0f} mm left of the body's middle on "
        "average, but the liver and these veins are on the right. Check the markups' coordinate system (a file "
        "read as LPS when it is RAS, or the reverse, mirrors the points) and that the image is not flipped "
        "left-right; situs inversus is not supported."
    )


def median_filtered(arr: np.ndarray, size: int) -> np.ndarray:
    """Median over `size` voxels a side (odd) of a 3-D float array: SimpleITK's multi-threaded filter, faster than
    scipy's `median_filter` on few cores. For size 3
    the values are scipy's, faces included; for larger sizes the faces differ (ITK repeats the face voxel,
    scipy reflects)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    return sitk.GetArrayFromImage(sitk.Median(image, [size // 2] * 3))


def working_noise_hu(arr: np.ndarray) -> float:
    """The noise sd (HU) of a working grid: the robust sd (`parenchyma_statistics`: 1.4826 × MAD) of the differences
    between neighbours along x in soft tissue (0-300 HU, both voxels), over the square root of 2."""
    a, b = arr[:, :, 1:], arr[:, :, :-1]
    both = (a > 0) & (a < 300) & (b > 0) & (b < 300)
    d = (a - b)[both]
    if d.size < 100:
        return 0.0
    return parenchyma_statistics(d)[1] / float(np.sqrt(2.0))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def parenchyma_separation(arr: np.ndarray, sample: np.ndarray) -> float:
    """How far the parenchyma stands from the soft tissue darker than it, in parenchyma sds: the peak of the values
    in `sample` (near the landmarks: `tissue_model.peak_statistics`, robust to the vessels the landmarks lie on)
    minus the mode of the region's soft tissue between 0 HU and two of its sds below that peak (muscle, bowel, a
    tumour; the parenchyma's own flank left out), over the peak's sd. inf when no such tissue is there."""
    level, sd = peak_statistics(arr[sample])
    top = level - 2.0 * sd
    darker = arr[(arr > 0.0) & (arr < top)]
    if darker.size < 100 or top < 4.0:
        return float("inf")
    hist, edges = np.histogram(darker, bins=np.arange(0.0, top + 2.0, 2.0))
    mode = float(edges[int(np.argmax(ndimage.gaussian_filter1d(hist.astype(float), 2.0)))] + 1.0)
    return (level - mode) / sd


def _separating_smoothing(arr: np.ndarray, sample: np.ndarray, spacing_zyx, min_separation: float,
                          max_smoothing_mm: float) -> tuple[np.ndarray, float]:
    """The working grid smoothed (Gaussian of 1, 2, ... mm, up to `max_smoothing_mm`) until the parenchyma stands
    `min_separation` of its sds from the soft tissue darker than it (`parenchyma_separation`): a weakly enhanced
    liver (60-80 HU) is then told from muscle and bowel (45-60 HU) in strong noise, while a well enhanced one is
    left as it is. Returns (values, the smoothing in mm)."""
    sigma = 0.0
    values = arr
    while parenchyma_separation(values, sample) < min_separation and sigma + 1.0 <= max_smoothing_mm:
        sigma += 1.0
        values = ndimage.gaussian_filter(arr, sigma / np.asarray(spacing_zyx, float)).astype(arr.dtype)
    return values, sigma


def _histogram_mode(values: np.ndarray, lo: float, hi: float) -> float:
    v = values[(values > lo) & (values < hi)]
    if v.size == 0:
        raise InputError("No liver-like soft tissue (60-200 HU) found; is this a contrast-enhanced abdominal CT?")
    hist, edges = np.histogram(v, bins=np.arange(lo, hi + 2.0, 2.0))
    hist = ndimage.gaussian_filter1d(hist.astype(float), 2.0)
    return float(edges[np.argmax(hist)] + 1.0)


def liver_classes(model, anchor: int) -> np.ndarray:
    """Boolean per class: the anchored parenchyma class and any free class indistinguishable from it
    (mean within one anchor sd, sd at most twice the anchor's)."""
    m, s = model.means_hu, model.sds_hu
    same = (np.abs(m - m[anchor]) <= s[anchor]) & (s <= 2.0 * s[anchor])
    same[anchor] = True
    return same


def equal_prior_model(model, classes: np.ndarray):
    """The mixture with the liver classes (`classes`) holding half the prior and the other classes the other half,
    each group's weights in their fitted proportions."""
    weights = np.asarray(model.weights, float).copy()
    weights[classes] *= 0.5 / max(weights[classes].sum(), 1e-12)
    weights[~classes] *= 0.5 / max(weights[~classes].sum(), 1e-12)
    return replace(model, weights=weights)


def liver_class_posterior(values: np.ndarray, model, classes: np.ndarray) -> np.ndarray:
    """P(liver | intensity): summed posteriors of the mixture classes flagged in `classes`; float32."""
    from .tissue_model import posteriors

    return posteriors(values, model)[classes].sum(axis=0)


def liver_by_mixture(arr: np.ndarray, soft: np.ndarray, model, classes: np.ndarray, mrf_beta: float) -> np.ndarray:
    """Where the liver classes' posterior (`liver_class_posterior`; 0 outside the `soft` voxels), smoothed by the
    mean-field MRF of two classes, liver and the rest, is above one half (bool)."""
    p_liver = liver_class_posterior(arr, model, classes)
    p_liver[~soft] = 0.0
    return mrf_regularise(np.stack([p_liver, 1.0 - p_liver]), beta=mrf_beta, iterations=5)[0] > 0.5


def extract_liver(ct: sitk.Image, landmarks: dict[str, np.ndarray] | None = None, *,
                  working_spacing_mm: float = 2.5, roi_margin_mm: float = 150.0, seed_radius_mm: float = 20.0,
                  erosion_mm: float = 6.0, separation_mm: float = 8.0, closing_mm: float = 8.0,
                  mrf_beta: float = 1.0, dark_sd: float = 3.0, half_max_edge: bool = True,
                  concavity_mm: float = 35.0, soft_tissue_hu: float = 40.0, concavity_median: int = 3,
                  thin_contact: float = 0.25, raw: bool = False, min_separation: float = 3.0,
                  max_smoothing_mm: float = 3.0, median_above_noise_hu: float = MEDIAN_ABOVE_NOISE_HU,
                  border_reach_mm: float = 4.0,
                  progress: Progress | None = None) -> sitk.Image:
    """Liver mask (uint8 0/1, exactly the CT's geometry) of a (denoised) contrast-enhanced CT in HU.

    Args:
        ct: CT in HU, float or integer pixels, any spacing and direction.
        landmarks: label → point in LPS mm lying in or on the liver (IVC, hepatic and portal veins): the seeds.
            None: the right-upper-abdomen heuristic (module docstring).
        working_spacing_mm: approximate voxel size of the working grid (block averaging).
        roi_margin_mm: half-size of the search box around the landmarks.
        seed_radius_mm: radius of the balls around landmarks used for the parenchyma statistics and as seeds.
        erosion_mm: erosion radius that separates the liver from touching organs (undone by geodesic dilation).
        separation_mm: erosion radius of the markers of a watershed that cuts the liver from touching organs
            at necks (`separate_at_necks`); it acts only when larger than `erosion_mm`, and 0 disables it. The
            6 mm erosion leaves the pancreas (and the spleen beyond it, or the duodenum) joined to the liver
            where they touch over a broad neck; the larger markers' erosion cuts them apart there. Too large a
            radius cuts liver thinner than the markers' radius (a thin left lobe) from the seeded part; 8 mm
            keeps a margin from that edge. A single larger erosion (no watershed) separates less well.
        closing_mm: closing radius that brings border notches (vessels, lesions) into the liver.
        mrf_beta: strength of the mean-field smoothing of the liver-class posterior.
        half_max_edge: move the border out to the half-maximum point (`half_maximum_edge`).
        concavity_mm, soft_tissue_hu: soft tissue (from `soft_tissue_hu` to the parenchyma minus one sd)
            in the mask's concavities up to this radius joins the liver (`soft_tissue_in_concavities`:
            tumours at the surface); 0 disables it. 35 mm closes the bite of a tumour up to about 70 mm across,
            the size of the large masses real CTs show.
        concavity_median: that test reads the working grid median-filtered over this many voxels a side (1: as
            it is). On the raw CT's grid noise puts many voxels of a metastasis (about 55 HU) under the 40 HU
            floor, and the opening then drops what is left between them, so that a large metastasis lies half
            outside the mask; the median restores them. The heterogeneous-tumour test
            (`surrounded_tissue_in_concavities`) keeps the unfiltered grid: smoothed, it takes in other tissue.
        thin_contact: liver-like tissue beyond the reach of the dilation that undoes the erosion joins where at
            least this share of its surface touches the liver and it closes the liver over 1 ml or more
            (`thin_attached_parts`: the thin parenchyma over a tumour near the surface); 0 disables it.
        raw: the CT is not denoised (the pipeline finds the liver before denoising). Block averaging to the
            working grid averages its noise away where the CT's voxels are small; where the working grid's noise
            (`working_noise_hu`) is still above `MEDIAN_ABOVE_NOISE_HU` the grid is median-filtered (3 voxels):
            the liver region can otherwise fail to grow from the seeds. A grid whose noise is already low is left
            as it is: the median's 3 voxels span 14 mm across slices of 4.8 mm and cut thin parts (the dome, the
            left lobe's tip) and tumours from the liver. Where nothing liver-like survives the erosion of the
            filtered grid, the unfiltered one is tried (`median_above_noise_hu`: inf never filters).
        min_separation, max_smoothing_mm: with landmarks, the working grid is smoothed (up to `max_smoothing_mm`)
            until the parenchyma near them stands `min_separation` of its sds from the darker soft tissue of the
            region (`_separating_smoothing`): a liver of 60-80 HU is otherwise not told from muscle and bowel in
            noise.
        border_reach_mm: the liver grows up to this far into tissue that is liver by the mixture with equal
            priors for the liver and the rest (`equal_prior_model`; the MRF supplies the spatial context). The
            mixture's own weights are the region's shares, in which the liver is a minority beside muscle, bowel
            and fat: with them the border voxels, partly liver and partly a neighbour, go to the neighbour and the
            posterior border lies millimetres inside the half-contrast edge, most of all in noisy, weakly
            enhanced CTs (where a tumour at the surface then falls outside). Equal priors everywhere would also
            take in neighbours of nearly the liver's intensity (bowel, pancreas); within a few millimetres of the
            border found with the region's priors they only move the border. What the growth adds is kept where,
            with the liver, it holds a ball of that radius: it does not run along the sheets of nearly the
            liver's intensity that touch it (the stomach's wall, the diaphragm, the bowel's wall). 0 disables it.
    Raises InputError when no liver-like tissue is found near the seeds.
    """
    options = {k: v for k, v in locals().items() if k not in ("ct", "landmarks")}  # the parameters, for a retry
    from .tissue_model import fit_anchored_mixture

    def report(f: float, msg: str) -> None:
        if progress is not None:
            progress(f, msg)

    ct = sitk.Cast(ct, sitk.sitkFloat32) if ct.GetPixelID() != sitk.sitkFloat32 else ct
    size = np.asarray(ct.GetSize())
    spacing = np.asarray(ct.GetSpacing())
    report(0.0, "liver: region of interest")
    # 1. region of interest and working grid
    if landmarks:
        idx = np.array([geometry.lps_to_index(ct, p) for p in landmarks.values()])
        margin = roi_margin_mm / spacing
        lo = np.clip(np.floor(idx.min(0) - margin), 0, size - 1).astype(int)
        hi = np.clip(np.ceil(idx.max(0) + margin) + 1, 1, size).astype(int)
    else:
        lo, hi = np.zeros(3, int), size.copy()
    roi = sitk.RegionOfInterest(ct, [int(v) for v in hi - lo], [int(v) for v in lo])
    shrink = [int(max(1, round(working_spacing_mm / s))) for s in spacing]
    small = sitk.BinShrink(roi, shrink) if max(shrink) > 1 else roi
    arr = sitk.GetArrayFromImage(small)
    filtered = raw and working_noise_hu(arr) > median_above_noise_hu
    if filtered:
        # block averaging left the noise in (coarse or noisy voxels): the working grid is median-filtered
        arr = median_filtered(arr, 3)
    sp_zyx = np.asarray(small.GetSpacing())[::-1]

    # 2. seeds and parenchyma statistics
    seed_mask = np.zeros(arr.shape, bool)
    if landmarks:
        grid_idx = np.array([small.TransformPhysicalPointToContinuousIndex(tuple(float(c) for c in p))
                             for p in landmarks.values()])[:, ::-1]  # z, y, x
        zz, yy, xx = np.indices(arr.shape, sparse=True)
        for c in grid_idx:
            d2 = ((zz - c[0]) * sp_zyx[0]) ** 2 + ((yy - c[1]) * sp_zyx[1]) ** 2 + ((xx - c[2]) * sp_zyx[2]) ** 2
            seed_mask |= d2 <= seed_radius_mm ** 2
        if (seed_mask & (arr > -50) & (arr < 300)).sum() < 20:
            raise InputError("No soft tissue around the landmarks: they should lie on the liver's vessels "
                             "(check that they belong to this CT and their coordinate system).")
        arr, _ = _separating_smoothing(arr, seed_mask & (arr > -50) & (arr < 300), sp_zyx, min_separation,
                                       max_smoothing_mm)
        par_mu, par_sd = parenchyma_statistics(arr[seed_mask & (arr > -50) & (arr < 300)])
    else:
        body = arr > -300
        par_mu = _histogram_mode(arr[body], 60.0, 200.0)
        near = arr[body & (np.abs(arr - par_mu) < 60)]
        par_mu, par_sd = parenchyma_statistics(near)
        par_sd = min(par_sd, 30.0)
    report(0.2, "liver: EM mixture")

    # 3. EM mixture of the soft tissue in the region, liver class, MRF
    soft = (arr > -150) & (arr < 400)
    model, anchor = fit_anchored_mixture(arr[soft], par_mu, par_sd)
    liver_class = liver_classes(model, anchor)
    candidate = liver_by_mixture(arr, soft, model, liver_class, mrf_beta)
    if border_reach_mm > 0:
        border_candidate = liver_by_mixture(arr, soft, equal_prior_model(model, liver_class), liver_class, mrf_beta)
    report(0.45, "liver: connectivity")

    # 4. erosion, seeded components, geodesic dilation, closing, holes
    ball = geometry.ball_structure(erosion_mm, sp_zyx)
    core = ndimage.binary_erosion(candidate, structure=ball)
    lab, n = ndimage.label(core)
    if n == 0:
        if filtered:  # the median and the smoothing after it merged a weakly enhanced liver with its neighbours
            return extract_liver(ct, landmarks, **{**options, "median_above_noise_hu": float("inf")})
        raise InputError("No liver-like tissue found (nothing survives the erosion); is this a contrast-enhanced "
                         "abdominal CT with the liver in the field of view?")
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    if landmarks:
        touched = np.unique(lab[seed_mask & (lab > 0)])
        if touched.size == 0:
            # nearest component to the landmarks' centroid
            dist, inds = ndimage.distance_transform_edt(lab == 0, sampling=sp_zyx, return_indices=True)
            c = np.clip(np.round(grid_idx.mean(0)).astype(int), 0, np.array(arr.shape) - 1)
            touched = np.array([lab[tuple(inds[:, c[0], c[1], c[2]])]])
        keep = touched[counts[touched] >= 0.2 * counts[touched].max()]
    else:
        # right upper abdomen: patient's right = low LPS x; take the largest component whose centroid
        # lies in the body's right half and upper half (by LPS coordinates of the working grid)
        keep = _right_upper_component(lab, counts, small)
    core = np.isin(lab, keep)
    steps = int(np.ceil(erosion_mm / sp_zyx.min())) + 1
    liver_small = ndimage.binary_dilation(core, iterations=steps, mask=candidate)
    if thin_contact > 0:
        liver_small |= thin_attached_parts(candidate, liver_small, core, (lab > 0) & ~core, sp_zyx, thin_contact)
    if separation_mm > erosion_mm:
        liver_small &= separate_at_necks(candidate, seed_mask if landmarks else core, sp_zyx, separation_mm)
    liver_small = geometry.close_mm(liver_small, closing_mm, sp_zyx)
    if border_reach_mm > 0:
        within = geometry.dilate_mm(liver_small, border_reach_mm, sp_zyx) & border_candidate
        reach_steps = int(np.ceil(border_reach_mm / sp_zyx.min()))
        grown = ndimage.binary_dilation(liver_small, iterations=reach_steps, mask=within)
        liver_small |= grown & geometry.open_mm(grown, border_reach_mm, sp_zyx)
    parenchyma = _largest_component(liver_small)
    added, rejected = dark_regions(arr, parenchyma, geometry.fill_holes(parenchyma), par_mu, par_sd, sp_zyx, dark_sd=dark_sd)
    liver_small = geometry.fill_holes(parenchyma | added) & ~rejected
    if concavity_mm > 0:
        smooth = median_filtered(arr, int(concavity_median)) if concavity_median > 1 else arr
        bite = soft_tissue_in_concavities(smooth, liver_small, sp_zyx, concavity_mm,
                                          soft_hu=(soft_tissue_hu, par_mu - par_sd))
        liver_small |= bite
        bite |= surrounded_tissue_in_concavities(arr, liver_small, sp_zyx, concavity_mm, soft_tissue_hu)
        liver_small = geometry.fill_holes(liver_small | bite)
        added = added | bite
    report(0.7, "liver: full-resolution border")

    # 5. back to the CT's grid with a refined border, on the part of the region round the mask
    box = _full_resolution_box(liver_small, shrink, roi.GetSize(), np.asarray(roi.GetSpacing()))
    lo = lo + np.asarray(box[0])
    hi = lo + np.asarray(box[1])
    roi = sitk.RegionOfInterest(roi, box[1], box[0])
    small_mask = sitk.GetImageFromArray(liver_small.astype(np.float32))
    small_mask.CopyInformation(small)
    up = sitk.Resample(small_mask, roi, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    up_arr = sitk.GetArrayFromImage(up)
    roi_arr = sitk.GetArrayViewFromImage(roi)
    band = (up_arr > 0.02) & (up_arr < 0.98)
    inside = up_arr >= 0.98
    if band.any():
        pb = liver_class_posterior(roi_arr[band], model, liver_class)
        # in the band keep the interpolated mask's vote unless the intensity clearly disagrees
        vote = 0.5 * pb + 0.5 * up_arr[band]
        refined = inside.copy()
        refined[band] = vote > 0.5
        if added.any():  # lesions added at the border keep their extent (their intensity is not the liver's)
            add_img = sitk.GetImageFromArray(added.astype(np.float32))
            add_img.CopyInformation(small)
            refined |= sitk.GetArrayFromImage(
                sitk.Resample(add_img, roi, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)) > 0.5
    else:
        refined = up_arr > 0.5
    refined = ndimage.binary_opening(refined, structure=ndimage.generate_binary_structure(3, 1))
    refined = geometry.fill_holes(_largest_component(refined))
    if half_max_edge:
        refined = half_maximum_edge(roi_arr, refined, par_mu, np.asarray(roi.GetSpacing())[::-1])
    out = np.zeros(ct.GetSize()[::-1], np.uint8)
    out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = refined
    mask = sitk.GetImageFromArray(out)
    mask.CopyInformation(ct)
    report(1.0, "liver done")
    return mask


def thin_attached_parts(candidate: np.ndarray, liver: np.ndarray, liver_cores: np.ndarray,
                        other_cores: np.ndarray, spacing_zyx, min_contact: float = 0.25,
                        min_enclosed_ml: float = 1.0) -> np.ndarray:
    """Thin parenchyma beyond the reach of the geodesic dilation that closes the liver over a tumour.

    The dilation that undoes the erosion reaches one erosion radius (plus a voxel) from the eroded cores, so
    parenchyma thinner than twice that radius is kept only near thick liver. The layer of parenchyma between a
    tumour near the surface and the capsule is such a part: where the dilation does not reach it, the tumour is
    left at the mask's surface instead of inside it.
    The candidate (liver-like) voxels are shared between the liver's cores and the other organs' cores by a
    watershed of the distance to the candidate's border, which puts the borders at the necks where organs
    touch. Of the liver's share, the 26-connected pieces outside `liver` with at least `min_contact` of their
    one-voxel shell in `liver` (a layer lies along the liver; a structure reached through a neck or standing on
    it touches it at one end) join when, with them, the liver encloses at least `min_enclosed_ml` more.
    The contact shares of true liver and of other tissue overlap, so contact alone would join pieces of other
    organs; the enclosure test keeps them out, since they close nothing of the liver. A long thin lobe
    attached at one end (the tip of a left lobe beyond a metastasis) touches little and is not taken.
    candidate, liver, liver_cores, other_cores: bool masks of one shape; spacing_zyx: mm. Returns a bool mask.
    """
    from skimage.segmentation import watershed

    if not (candidate & ~liver).any():
        return np.zeros(liver.shape, bool)
    markers = np.where(liver_cores, 1, np.where(other_cores, 2, 0)).astype(np.int32)
    depth = ndimage.distance_transform_edt(candidate, sampling=spacing_zyx).astype(np.float32)
    basin = watershed(-depth, markers, mask=candidate) == 1
    cube = np.ones((3, 3, 3), bool)
    along = geometry.components_with_shell_in(basin & ~liver, liver, min_contact, structure=cube)
    if not along.any():
        return along
    # only pieces that close the liver over something of at least min_enclosed_ml
    enclosed = geometry.fill_holes(liver | along) & ~geometry.fill_holes(liver) & ~along
    hl, _ = ndimage.label(enclosed)
    sizes = np.bincount(hl.ravel()) * (float(np.prod(spacing_zyx)) / 1000.0)
    sizes[0] = 0.0
    sealing = ndimage.binary_dilation(np.isin(hl, np.flatnonzero(sizes >= min_enclosed_ml)), structure=cube) & along
    return ndimage.binary_propagation(sealing, structure=cube, mask=along)  # the whole pieces that seal


def _full_resolution_box(liver_small: np.ndarray, shrink, roi_size, roi_spacing, margin_mm: float = 12.0):
    """Index box (start_xyz, size_xyz) of the region of interest that holds every full-resolution voxel the
    border refinement can touch: the working-grid mask's bounding box, widened by two working voxels (where
    the interpolated mask is still nonzero) and by `margin_mm`, at least 16 voxels (the half-maximum ring and
    the neighbourhood it averages). The refinement on the box gives the same mask as on the whole region:
    the box keeps background all round the mask, so hole filling and opening see the same borders."""
    nz = np.argwhere(liver_small)
    f = np.asarray(shrink)[::-1]  # z, y, x
    extra = 2 * f + np.maximum(np.ceil(margin_mm / np.asarray(roi_spacing)[::-1]).astype(int), 16)
    lo = np.maximum(nz.min(0) * f - extra, 0)
    hi = np.minimum((nz.max(0) + 1) * f + extra, np.asarray(roi_size)[::-1])
    return [int(v) for v in lo[::-1]], [int(v) for v in (hi - lo)[::-1]]


def soft_tissue_in_concavities(arr: np.ndarray, mask: np.ndarray, spacing_zyx, radius_mm: float,
                               soft_hu: tuple[float, float]) -> np.ndarray:
    """Soft-tissue voxels that fill concavities of the liver mask: tumours at the surface.

    A hypodense tumour at the liver's surface is neither liver-like (the EM liver class) nor dark enough for
    `dark_regions` (a metastasis at 55-95 HU is as dark as the muscle it touches), so the mask follows the
    parenchyma around it and leaves a bite. The liver's own outline closes over the bite: voxels inside
    the mask's closing by a ball of `radius_mm` (`geometry.close_mm`: two distance transforms), outside the mask,
    with intensities in `soft_hu` (above fluid and fat, below the parenchyma), are returned (opened by
    one voxel, so that single voxels between organs do not join). What else it adds is non-liver tissue
    between the liver and a neighbour the mask already touches, in small amounts.
    arr: intensities (HU); mask: bool liver mask (same shape); spacing_zyx: mm. Returns a bool mask.
    """
    closed = geometry.close_mm(mask, radius_mm, spacing_zyx)
    add = closed & ~mask & (arr > soft_hu[0]) & (arr < soft_hu[1])
    return ndimage.binary_opening(add, structure=ndimage.generate_binary_structure(3, 1))


def surrounded_tissue_in_concavities(arr: np.ndarray, mask: np.ndarray, spacing_zyx, radius_mm: float,
                                     min_hu: float, min_contact: float = 0.65) -> np.ndarray:
    """Tissue of any density above fluid that fills a concavity of the liver mask and that the mask surrounds:
    a heterogeneous tumour at the surface.

    A haemangioma's peripheral band mixes nodules as bright as blood with tissue between hypodense and
    parenchymal; a large one near the surface is neither liver-like, nor dark (`dark_regions`), nor soft
    tissue alone (`soft_tissue_in_concavities`), so the mask leaves a bite where it lies and most of the
    tumour outside. Components of voxels above `min_hu` inside the mask's
    closing by a ball of `radius_mm` and outside the mask (opened by one voxel) join when at least
    `min_contact` of their one-voxel shell is mask, the share `dark_regions` asks of a tumour: the kidney in
    its impression, the IVC in its groove and the hilum's vessels touch the mask on one side, well under
    that share, while a tumour in a bite is mostly surrounded by it.
    arr: intensities (HU); mask: bool liver mask (same shape); spacing_zyx: mm. Returns a bool mask.
    """
    six = ndimage.generate_binary_structure(3, 1)
    closed = geometry.close_mm(mask, radius_mm, spacing_zyx)
    candidate = ndimage.binary_opening(closed & ~mask & (arr > min_hu), structure=six)
    return geometry.components_with_shell_in(candidate, mask, min_contact)


def half_maximum_edge(arr: np.ndarray, mask: np.ndarray, liver_mean_hu: float, spacing_zyx,
                      beyond_mm: float = 1.5) -> np.ndarray:
    """Add the ring of voxels just outside the mask (in-plane neighbours) whose intensity is above half-way
    between the liver and the tissue beyond them (the mean, over each voxel's in-plane neighbourhood, of the
    ring `beyond_mm` further out, past the blurred edge): where the border voxel is mostly liver by the
    partial-volume model. The
    class-posterior border lies inside that point at high-contrast borders (liver vs fat), which leaves the
    mask a few per cent smaller than the liver without this step.
    Intensities are lightly smoothed in-plane first (Gaussian sigma 1 voxel) against noise."""
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)
    grown1 = ndimage.binary_dilation(mask, structure=plane)
    ring = grown1 & ~mask
    if not ring.any():
        return mask
    gap = max(1, int(round(beyond_mm / float(min(spacing_zyx[1:])))))
    grown2 = ndimage.binary_dilation(grown1, structure=plane, iterations=gap)
    outer = ndimage.binary_dilation(grown2, structure=plane) & ~grown2
    pad = gap + 4
    idx = [np.flatnonzero(ring.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    sl = tuple(slice(max(0, i[0] - (0 if ax == 0 else pad)), i[-1] + 1 + (0 if ax == 0 else pad))
               for ax, i in enumerate(idx))
    smooth = ndimage.gaussian_filter(arr[sl].astype(np.float32), sigma=(0, 1, 1))
    box = (1, 2 * gap + 5, 2 * gap + 5)
    out_sum = ndimage.uniform_filter(np.where(outer[sl], smooth, np.float32(0)), size=box)
    out_n = ndimage.uniform_filter(outer[sl].astype(np.float32), size=box)
    beyond = np.where(out_n > 0, out_sum / np.maximum(out_n, 1e-6), liver_mean_hu)
    add = ring[sl] & (smooth > 0.5 * (liver_mean_hu + beyond)) & (beyond < liver_mean_hu)
    result = mask.copy()
    result[sl] |= add
    return result


def separate_at_necks(candidate: np.ndarray, liver_seeds: np.ndarray, spacing_zyx, separation_mm: float,
                      min_competitor: float = 0.0) -> np.ndarray:
    """The part of `candidate` that belongs to the liver when touching organs compete for it.

    Markers: the components of `candidate` eroded by `separation_mm` (each holds a ball of that radius); the largest of those overlapping
    `liver_seeds` (and any at least a fifth of its size) are the liver's, the others of at least `min_competitor` of its size (pancreas, bowel, spleen, heart of liver-like
    intensity) compete. A watershed on the
    negated distance to the candidate's border floods from all markers, so the borders between them fall at
    the necks where organs touch. Returns the liver's basins (bool).
    """
    from .dependencies import SCIKIT_IMAGE, import_required

    watershed = import_required(SCIKIT_IMAGE, "segmentation").watershed
    eroded = ndimage.binary_erosion(candidate, structure=geometry.ball_structure(separation_mm, spacing_zyx))
    lab, n = ndimage.label(eroded)
    if n <= 1:
        return candidate
    liver_ids = np.unique(lab[liver_seeds & (lab > 0)])
    if liver_ids.size == 0:
        return candidate
    sizes = np.bincount(lab.ravel())
    liver_ids = liver_ids[sizes[liver_ids] >= 0.2 * sizes[liver_ids].max()]
    # competitors: markers of a meaningful size (tiny ones are noise inside the liver's own thin parts)
    competitors = np.flatnonzero(sizes >= min_competitor * sizes[liver_ids].sum())
    competitors = competitors[(competitors > 0) & ~np.isin(competitors, liver_ids)]
    markers = np.where(np.isin(lab, liver_ids), 1, np.where(np.isin(lab, competitors), 2, 0)).astype(np.int32)
    dist = ndimage.distance_transform_edt(candidate, sampling=spacing_zyx).astype(np.float32)
    basins = watershed(-dist, markers, mask=candidate)
    return basins == 1


def dark_regions(arr: np.ndarray, parenchyma: np.ndarray, filled: np.ndarray, par_mu: float, par_sd: float,
                 spacing_zyx, *, hull_mm: float = 15.0, dark_sd: float = 3.0, min_liver_contact: float = 0.65,
                 fat_hu: float = -60.0, fluid_sd: float = 5.0, fluid_floor_hu: float = FLUID_HU,
                 min_fluid_ml: float = 1.0, min_in_envelope: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Decide which hypodense regions in or at the liver belong to it: tumours and cysts yes, gallbladder no.

    Candidates: voxels outside the parenchyma but inside its hole-filled version or within `hull_mm` of it,
    darker than parenchyma by `dark_sd` sds and above fat (`fat_hu`), in components touching the
    parenchyma. A component belongs to the liver when at least `min_liver_contact` of its one-voxel shell
    is parenchyma: a tumour (even one bulging from the surface) is mostly surrounded by parenchyma, while the
    gallbladder, bowel and the fat rim around the liver touch fat over much of their surface in 3-D,
    even where a 2-D slice shows them enclosed. Rejected components are removed from the liver unless
    they are 3-D holes of the parenchyma.
    A subcapsular cyst or tumour touches the body wall or a neighbour (muscle-dark too) and joins it in one
    component, so that it fails the contact test. Second chance: inside the rejected components, fluid-dark
    regions (below `fluid_floor_hu`, 30 HU, or `fluid_sd` sds below the parenchyma where that is higher) of
    at least `min_fluid_ml` that lie at least
    `min_in_envelope` inside the liver's envelope (the parenchyma closed by a ball of `hull_mm`) are
    accepted with a one-voxel rim: a lesion lies wholly in the envelope, while fluid that is no lesion
    (gallbladder, bowel) lies mostly outside it.
    The 30 HU floor: on the raw working grid the parenchyma's sd is that of the noise, and 5 sds below it can
    fall under 0 HU on noisy CTs, so that a subcapsular cyst (about 10-20 HU) would be no fluid, left out of
    the liver and missed; with the floor it is found.
    Returns (accepted, rejected) voxel masks (bool, arr's shape).
    """
    enclosed = geometry.fill_enclosed(parenchyma)  # 3-D holes: always the liver's
    near = filled | geometry.dilate_mm(parenchyma, hull_mm, spacing_zyx)
    dark = near & ~parenchyma & (arr > fat_hu) & (arr < par_mu - dark_sd * par_sd)
    six = ndimage.generate_binary_structure(3, 1)
    dark = ndimage.binary_opening(dark, structure=six)
    lab, n = ndimage.label(dark)
    accepted = np.zeros(arr.shape, bool)
    rejected = np.zeros(arr.shape, bool)
    if n == 0:
        return accepted, rejected
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        sl = geometry.widen(sl, 2, lab.shape)
        comp = lab[sl] == i
        contact = geometry.shell_fraction(comp, parenchyma[sl])
        if contact == 0:
            continue
        if contact >= min_liver_contact:
            accepted[sl] |= comp
        elif not (comp & enclosed[sl]).all():
            rejected[sl] |= comp
    if rejected.any():
        fluid_below_hu = max(par_mu - fluid_sd * par_sd, fluid_floor_hu)
        _accept_subcapsular_fluid(arr, parenchyma, accepted, rejected, fluid_below_hu, spacing_zyx, hull_mm, min_fluid_ml,
                                  min_in_envelope)
    return accepted, rejected


def _accept_subcapsular_fluid(arr, parenchyma, accepted, rejected, fluid_below_hu, spacing_zyx, envelope_mm,
                              min_ml, min_in_envelope) -> None:
    """Move fluid-dark blobs inside the liver's envelope, or embedded in the parenchyma, from `rejected` to
    `accepted` (in place). Embedded (`embedded_in_parenchyma`): at least 0.25 of the blob's own one-voxel
    shell is parenchyma, and parenchyma lies within 5 mm of it in at least 0.4 of 26 directions. That takes in
    a cyst filling the thickness of a thin lobe, which the envelope (a closing smaller than the cyst) does not
    reach, while the gallbladder, stomach, bowel and kidney touch the parenchyma less and are not closed by it."""
    six = ndimage.generate_binary_structure(3, 1)
    fluid = ndimage.binary_opening(rejected & (arr < fluid_below_hu), structure=six)
    lab, n = ndimage.label(fluid)
    if n == 0:
        return
    envelope = geometry.close_mm(parenchyma, envelope_mm, spacing_zyx)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    pad = np.ceil(EMBEDDED_REACH_MM / np.asarray(spacing_zyx, dtype=float)).astype(int) + 2
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        sl = geometry.widen(sl, pad, lab.shape)
        comp = lab[sl] == i
        if comp.sum() * voxel_ml < min_ml:
            continue
        if (comp & envelope[sl]).sum() < min_in_envelope * comp.sum() and not embedded_in_parenchyma(
                comp, parenchyma[sl], spacing_zyx):
            continue
        blob = ndimage.binary_dilation(comp, structure=six) & (rejected[sl] | comp)
        accepted[sl] |= blob
        rejected[sl] &= ~blob


def _right_upper_component(lab: np.ndarray, counts: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Label of the largest component whose centroid lies in the patient's right and upper half of the body."""
    body = lab > 0
    coords = np.argwhere(body)
    pts = geometry.voxel_centers_lps(image, coords[:: max(1, len(coords) // 200000)])
    mid_x, mid_z = np.median(pts[:, 0]), np.median(pts[:, 2])
    best, best_count = None, 0
    for label in np.argsort(counts)[::-1][:10]:
        if label == 0 or counts[label] == 0:
            continue
        c = np.argwhere(lab == label).mean(0)
        p = geometry.voxel_centers_lps(image, c[None])[0]
        if p[0] <= mid_x + 20 and p[2] >= mid_z - 80 and counts[label] > best_count:
            best, best_count = label, counts[label]
    if best is None:
        raise InputError("No liver found without landmarks (no large liver-like region in the right upper abdomen); "
                         "place the landmarks or give a liver mask.")
    return np.array([best])
