"""Lesions inside the liver: a region-evidence model, lesion instances and their measurements.

A lesion is a region of the liver darker than the parenchyma round it. How certain that is depends on the
region's size as much as on its contrast: the mean of a 5 cm region 1 noise sd darker than its surroundings
is as far outside the parenchyma's variation as that of a 1 cm region 4 sds darker. The model therefore
judges regions, not voxels (`detect_lesions`):

1. **Reference parenchyma** (`reference_parenchyma`): the liver's voxels less the bright ones (vessels,
   calcifications, lipiodol: above the main peak by `bright_sd` of its sds), fat and its partial-volume seam,
   the partial-volume band along the liver's border (two voxels of each axis, at least `band_mm`) and the
   sheath round large vessels (Glisson's sheath and the hilum's fat and ducts are darker than parenchyma).
2. **Contrast at every size** (`contrast_evidence`): on a grid of about `working_mm` in-plane, the mean of a
   box the volume of a ball of radius r is compared with the mean of the ring round it (`gap_mm` away,
   `ring_mm` wide), over reference voxels only, for radii `radii_mm`. Each scale's null distribution is taken
   from the liver itself: the mode and the half width of the peak of its contrasts (robust to tumours on one
   side and vessels on the other), the sd no smaller than `structure_floor_hu` (the regional variation of
   enhancement of real livers, which a homogeneous scan underestimates at large scales). A box is
   significant when its z exceeds a Gaussian bound, Bonferroni-corrected over the independent boxes of its
   scale and over the scales, so that `false_alarms` chance detections are expected in a liver.
3. **Extent** (`lesion_extent`): round each connected set of significant voxels, an EM fit of two Gaussian
   classes (lesion, parenchyma) to the intensities, lightly smoothed in proportion to the scale at which the
   seed is significant, refined with a partial-volume class for the border voxels between them
   (`partial_volume_em`: the pure levels, not levels pulled together by the border), and a mean-field MRF
   with equal priors and one pooled sd put the border where a voxel is as likely lesion as parenchyma: the
   half-contrast edge of a blurred step. The lesion is the MRF's lesion
   components touching the seed, holes filled (necrosis, septa and deposits inside are the lesion's),
   closed by a ball of `close_fraction` of its radius (a heterogeneous mass is one lesion), within the
   significant boxes (and `support_margin_mm`), reaching into the border band only next to its own interior.
   A seed can span two regions of different darkness (a faint solid rim round a necrotic core): where more of
   it lies beyond the extent's partial-volume shell than inside the extent, and that part is darker than the
   parenchyma, it is grown on its own with the extent left out of its fit (`_grow_seed`).
   Then a **second look**: the contrast is measured again, against the same null, with the lesions found left
   out of the boxes, the rings and the extents' fits (`_significance_near`, round the significant voxels they
   leave unexplained): a faint tumour beside a cyst is otherwise hidden by the cyst's contrast in every box
   round both.
4. **Rim** (`add_rim`): 1 mm shells round the lesion that are brighter than the parenchyma beyond (by `rim_z`
   null sds of a region of the shell's size) in at least `rim_closure` of the directions join it: an
   enhancing rim or capsule (metastasis, HCC) is part of the tumour.
5. Instances: connected components, numbered 1..n by volume; those below `min_volume_mm3` are dropped.

`lesion_at_point` segments a lesion from a point the user clicked inside it, with the same extent model.
Lesions that are only hyperdense are not reported: in the portal-venous phase they cannot be told from
vessels by intensity.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, special

from . import geometry
from .errors import InputError
from .tissue_model import FLUID_HU, peak_statistics

FAT_HU = -30.0  # fat (and air) below this; a lesion holds none
BULGE_MM = 6.0  # a tumour's bulge beyond the liver holds a ball of this radius; the sheets round the liver do not
BULGE_MAX_SHARE = 1.5  # a bulge holds at most this share of the lesion found in the liver: a mass mostly outside is a neighbour's
BULGE_ROUNDS = 4  # at most this many rounds of `_thick_continuation` (it stops when a round adds nothing)
BULGE_MAX_RADII = 2.0  # a round of `_thick_continuation` reaches at most this many equivalent radii of what it grows from, from its centre
BALL_MIN_OWN = 0.5  # a bulging tumour's fitted ball is mostly its own tissue beyond the liver, or else what it pushes against (`_interface_ball`)
CLOSING_STEPS_PER_RADIUS = 8  # the bite's closing works on voxels of about 1/8 of its radius (or the CT's, if larger)


@dataclass(frozen=True)
class LesionParameters:
    """Settings of the lesion model (units in the names; see the module docstring for each step)."""

    min_volume_mm3: float = 100.0
    false_alarms: float = 0.1
    radii_mm: tuple[float, ...] = (2.5, 3.5, 5.0, 7.0, 10.0, 14.0, 20.0, 28.0)
    structure_floor_hu: float = 2.5
    working_mm: float = 1.4
    gap_mm: float = 2.0
    ring_mm: float = 6.0
    bright_sd: float = 2.5
    band_voxels: float = 2.0
    band_mm: float = 2.5
    sheath_mm: float = 3.0
    large_vessel_mm: float = 5.0
    context_mm: float = 10.0
    mrf_beta: float = 1.0
    min_separation: float = 3.0
    smooth_fraction: float = 0.25
    smooth_max_mm: float = 4.0
    close_fraction: float = 0.2
    close_max_mm: float = 4.0
    support_margin_mm: float = 2.0
    rim_mm: float = 6.0
    rim_fraction: float = 0.6
    rim_max_mm: float = 15.0
    rim_z: float = 3.0
    rim_closure: float = 0.7
    click_min_z: float = 2.0
    max_fat_wrap: float = 0.4

    def validate(self) -> None:
        if not 0 <= self.false_alarms <= 10:
            raise InputError(f"Lesion false alarms {self.false_alarms!r} a CT is out of range; use 0-10 (0.1 is "
                             "the default; more finds fainter lesions and more false ones; 0 detects none, for "
                             "clicked lesions only).")
        if not np.isfinite(self.min_volume_mm3) or self.min_volume_mm3 < 0:
            raise InputError(f"The smallest lesion volume {self.min_volume_mm3!r} mm³ must be a number >= 0.")


@dataclass
class ScaleStatistics:
    """The null distribution of one scale's centre-surround contrast: radius, mode and sd (HU), bound (z)."""

    radius_mm: float
    mode_hu: float
    sd_hu: float
    measured_sd_hu: float
    bound_z: float


@dataclass
class LesionDetection:
    """Output of `detect_lesions`: instance labels (uint16 [z, y, x], 1..n by volume), one evidence row per
    instance (id, contrast_hu against the ring round it, evidence_z at its most significant scale, scale_mm),
    the per-scale null statistics and the reference parenchyma level and sd (HU)."""

    labels: np.ndarray
    evidence: list[dict] = field(default_factory=list)
    scales: list[ScaleStatistics] = field(default_factory=list)
    parenchyma_hu: float = float("nan")
    parenchyma_sd_hu: float = float("nan")


# ------------------------------------------------------------------------------------- statistics


def block_means(values: np.ndarray, weight: np.ndarray, factors) -> tuple[np.ndarray, np.ndarray]:
    """Means of `values` over the `weight` voxels of blocks of `factors` voxels per axis (float32; 0 where a block
    holds none), and the fraction of each block that `weight` covers. The array is zero-padded to whole blocks."""
    f = [int(k) for k in factors]
    pad = [(0, (-n) % k) for n, k in zip(values.shape, f)]
    vw = np.pad(np.where(weight, values, 0).astype(np.float32), pad)
    w = np.pad(np.asarray(weight, np.float32), pad)
    shape = [v for n, k in zip(vw.shape, f) for v in (n // k, k)]
    total = vw.reshape(shape).sum(axis=(1, 3, 5))
    count = w.reshape(shape).sum(axis=(1, 3, 5))
    return total / np.maximum(count, 1e-6), count / float(np.prod(f))


def block_majority(mask: np.ndarray, factors, of_whole_block: bool = False) -> np.ndarray:
    """Blocks of `factors` voxels (as `block_means`' blocks) in which at least half the voxels are `mask` voxels
    (bool): of the image's voxels in the block, or with `of_whole_block` of the whole block's (the padding beyond
    the image counted as not `mask`). Exactly `block_means(mask, ones, factors)[0] >= 0.5` and
    `block_means(values, mask, factors)[1] >= 0.5`, by integer counts (no float copies or padding of the array)."""
    counts = np.asarray(mask, bool)
    sizes = []
    for axis, k in enumerate(int(v) for v in factors):
        n = counts.shape[axis]
        starts = np.arange(0, n, k)
        sizes.append(np.full(starts.size, k) if of_whole_block else np.minimum(k, n - starts))
        if k > 1:
            counts = np.add.reduceat(counts, starts, axis=axis, dtype=np.int32)
    total = sizes[0][:, None, None] * sizes[1][None, :, None] * sizes[2][None, None, :]
    return 2 * counts.astype(np.int32) >= total


def _upsample(a: np.ndarray, factors, shape) -> np.ndarray:
    """Repeat a block grid's values back onto the grid of `shape` (the inverse of `block_means`' blocks)."""
    for axis, k in enumerate(factors):
        if k > 1:
            a = a.repeat(int(k), axis=axis)
    return a[:shape[0], :shape[1], :shape[2]]


def centre_box_voxels(radius_mm: float, spacing_zyx) -> np.ndarray:
    """Odd box sides (voxels per axis) of about 1.61 radius_mm: a box with the volume of a ball of that radius."""
    sp = np.asarray(spacing_zyx, float)
    return np.maximum(1, 2 * np.round(0.806 * radius_mm / sp - 0.5) + 1).astype(int)


def _box_sum(a: np.ndarray, size) -> np.ndarray:
    return ndimage.uniform_filter(a, size=tuple(int(s) for s in size), mode="constant") * np.float32(np.prod(size))


def centre_surround_contrast(values: np.ndarray, weight: np.ndarray, spacing_zyx, radius_mm: float,
                             gap_mm: float, ring_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At every voxel: the mean of the `weight` voxels in the ring round a box the volume of a ball of `radius_mm`
    (from `gap_mm` to `gap_mm` + `ring_mm` beyond the box) minus the mean of those in the box (HU; positive: the
    centre is darker); where it is valid (half the box and a quarter of the ring are weight voxels); and its noise
    variance relative to a box and ring wholly inside the weight ((1/n_box + 1/n_ring) over its value for full
    counts: larger near the liver's border, where fewer voxels are averaged)."""
    sp = np.asarray(spacing_zyx, float)
    a = centre_box_voxels(radius_mm, sp)
    c = a + 2 * np.round(gap_mm / sp).astype(int)
    b = c + 2 * np.maximum(1, np.round(ring_mm / sp)).astype(int)
    vw = np.where(weight, values, 0).astype(np.float32)
    wf = np.asarray(weight, np.float32)
    # six independent box sums: two at a time (scipy's filters release Python's lock), the same sums in half the time
    with ThreadPoolExecutor(max_workers=2) as pool:
        sa, na, sc, nc, sb, nb = pool.map(lambda job: _box_sum(*job), [(x, s) for s in (a, c, b) for x in (vw, wf)])
    n_ring = nb - nc
    full_box, full_ring = float(np.prod(a)), float(np.prod(b) - np.prod(c))
    contrast = (sb - sc) / np.maximum(n_ring, 1e-3) - sa / np.maximum(na, 1e-3)
    valid = (na >= 0.5 * full_box) & (n_ring >= 0.25 * full_ring)
    relative = (1.0 / np.maximum(na, 1.0) + 1.0 / np.maximum(n_ring, 1.0)) / (1.0 / full_box + 1.0 / full_ring)
    return contrast.astype(np.float32), valid, relative.astype(np.float32)


# ------------------------------------------------------------------------------------- reference and evidence


@dataclass
class Reference:
    """Masks of `reference_parenchyma` (bool, the input's shape) and the parenchyma's peak level and sd (HU)."""

    solid: np.ndarray      # liver without fat
    usable: np.ndarray     # liver without bright voxels, fat and fat's seam: where lesions and rims may lie
    reference: np.ndarray  # usable, deeper than the border band, off large vessels' sheaths: the null's voxels
    interior: np.ndarray   # solid liver deeper than the border band
    bright: np.ndarray     # liver voxels above the peak by `bright_sd` sds (vessels, deposits, nodules)
    fat: np.ndarray        # liver voxels below FAT_HU
    band_mm: np.ndarray    # the border band's width per axis (z, y, x)
    level_hu: float
    sd_hu: float


def reference_parenchyma(values: np.ndarray, liver: np.ndarray, spacing_zyx, p: LesionParameters) -> Reference:
    """The voxels the parenchyma's statistics come from (module docstring, step 1)."""
    sp = np.asarray(spacing_zyx, float)
    level, sd = peak_statistics(values[liver])
    six = ndimage.generate_binary_structure(3, 1)
    bright_all = values > level + p.bright_sd * sd
    bright = ndimage.binary_dilation(liver & bright_all, structure=six)
    fat = liver & (values < FAT_HU)
    fat_seam = geometry.dilate_mm(fat, max(1.5, float(sp[1:].min())), sp) if fat.any() else fat
    solid = liver & ~fat
    band = np.maximum(p.band_voxels * sp, p.band_mm)
    interior = geometry.depth_mm(solid, sp / band) > 1.0
    usable = liver & ~bright & ~fat_seam
    reference = usable & interior
    if p.sheath_mm > 0:  # on a grid of about 1.5 mm: the sheath's width needs no finer one
        f = working_factors(sp, 1.5)
        coarse = block_majority(bright_all, f)
        vessel_core = geometry.depth_mm(coarse, sp * f) >= p.large_vessel_mm / 2.0
        if vessel_core.any():
            sheath = geometry.depth_mm(~vessel_core, sp * f) <= p.large_vessel_mm / 2.0 + p.sheath_mm
            reference &= ~_upsample(sheath, f, values.shape)
    return Reference(solid, usable, reference, interior, liver & bright_all, fat, band, level, sd)


def expected_chance_maxima(z: float, volume_mm3: float, fwhm_mm: float) -> float:
    """Expected number of chance maxima above `z` of a smooth Gaussian random field of smoothness `fwhm_mm` over
    a search volume of `volume_mm3` taken as a ball: the expected Euler characteristic of the excursion set
    (random field theory; Worsley et al. 1996, Hum Brain Mapp 4:58), with the ball's resel counts
    R0 = 1, R1 = 4 R / FWHM, R2 = 2 pi R^2 / FWHM^2, R3 = 4/3 pi R^3 / FWHM^3. Unlike a Bonferroni count of boxes,
    it counts how many separate peaks a field smoothed at that scale makes by chance."""
    radius = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    resels = (1.0, 4.0 * radius / fwhm_mm, 2.0 * np.pi * (radius / fwhm_mm) ** 2,
              4.0 / 3.0 * np.pi * (radius / fwhm_mm) ** 3)
    l4 = 4.0 * np.log(2.0)
    g = np.exp(-0.5 * z * z)
    densities = (float(special.ndtr(-z)), np.sqrt(l4) / (2.0 * np.pi) * g, l4 / (2.0 * np.pi) ** 1.5 * z * g,
                 l4 ** 1.5 / (2.0 * np.pi) ** 2 * (z * z - 1.0) * g)
    return float(sum(r * d for r, d in zip(resels, densities)))


def detection_bound(alarms: float, volume_mm3: float, fwhm_mm: float) -> float:
    """The z above which `alarms` chance maxima are expected (`expected_chance_maxima`); inf for no alarm."""
    if alarms <= 0:
        return float("inf")
    lo, hi = 0.5, 12.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if expected_chance_maxima(mid, volume_mm3, fwhm_mm) > alarms:
            lo = mid
        else:
            hi = mid
    return hi


def contrast_evidence(values: np.ndarray, reference: np.ndarray, spacing_zyx, p: LesionParameters,
                      null: list[ScaleStatistics] | None = None):
    """Per radius of `p.radii_mm`: the centre-surround contrast's z against its null, and the null statistics
    (module docstring, step 2; `null`: statistics measured before, used instead of measuring them on this
    reference). Returns (z stacked over the scales, float32 (S, z, y, x), -inf where invalid; list of
    ScaleStatistics)."""
    sp = np.asarray(spacing_zyx, float)
    reference_mm3 = float(reference.sum()) * float(np.prod(sp))
    zs, scales = [], []
    for k, r in enumerate(p.radii_mm):
        contrast, valid, relative = centre_surround_contrast(values, reference, sp, r, p.gap_mm, p.ring_mm)
        box_mm = centre_box_voxels(r, sp) * sp
        fwhm = 0.68 * float(np.prod(box_mm)) ** (1.0 / 3.0)  # a box of side a smooths like a Gaussian of FWHM 0.68 a
        if null is None:
            bound = detection_bound(p.false_alarms / len(p.radii_mm), reference_mm3, fwhm)
            sample = contrast[valid & reference & (relative < 1.2)]  # boxes (nearly) wholly inside: the noise to scale
            mode, measured = (peak_statistics(sample[:: max(1, sample.size // 200_000)]) if sample.size >= 100
                              else (0.0, float("nan")))
        else:
            bound, mode, measured = null[k].bound_z, null[k].mode_hu, null[k].measured_sd_hu
        if not np.isfinite(measured):
            zs.append(np.full(values.shape, -np.inf, np.float32))
            scales.append(ScaleStatistics(r, 0.0, float("inf"), float("nan"), bound))
            continue
        sd = max(measured, p.structure_floor_hu)
        local_sd = np.maximum(measured * np.sqrt(relative), p.structure_floor_hu)
        zs.append(np.where(valid, (contrast - mode) / local_sd, -np.inf).astype(np.float32))
        scales.append(ScaleStatistics(r, mode, sd, measured, bound))
    return np.stack(zs), scales


def _null_sd_at(scales: list[ScaleStatistics]):
    """The measured null sd as a function of a region's equivalent radius (log-log interpolation)."""
    ok = [s for s in scales if np.isfinite(s.measured_sd_hu)]
    radii = np.log([s.radius_mm for s in ok]) if ok else np.zeros(1)
    sds = np.log([s.measured_sd_hu for s in ok]) if ok else np.zeros(1)

    def null_sd(radius_mm: float) -> float:
        return float(np.exp(np.interp(np.log(max(radius_mm, 1e-3)), radii, sds)))

    return null_sd


def equivalent_radius_mm(n_voxels: int, voxel_mm3: float) -> float:
    """Radius (mm) of the ball with the volume of n_voxels voxels."""
    return (3.0 * n_voxels * voxel_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)


# ------------------------------------------------------------------------------------- extent


def _smoothed(values: np.ndarray, weight: np.ndarray, sigma_mm: float, spacing_zyx) -> np.ndarray:
    """Gaussian mean (sigma in mm per axis) of `values` over the `weight` voxels (normalised convolution: vessels
    and the outside do not bleed in); the values themselves where no weight voxel is near."""
    sigma = sigma_mm / np.asarray(spacing_zyx, float)
    num = ndimage.gaussian_filter(np.where(weight, values, 0).astype(np.float32), sigma)
    den = ndimage.gaussian_filter(np.asarray(weight, np.float32), sigma)
    return np.where(den > 0.05, num / np.maximum(den, 1e-3), values).astype(np.float32)


def lesion_extent(seed: np.ndarray, values: np.ndarray, liver: np.ndarray, usable: np.ndarray, solid: np.ndarray,
                  spacing_zyx, p: LesionParameters, ring_start_mm: float = 3.0,
                  max_smoothing_mm: float = 0.0) -> np.ndarray | None:
    """The lesion round a seed (bool arrays of one box): EM of two Gaussian classes, lesion and parenchyma, on the
    usable voxels within `ring_start_mm` + `p.context_mm` of the seed (initial means: the seed's darker-than-
    parenchyma voxels and the ring beyond `ring_start_mm`), then a mean-field MRF with equal priors and the pooled
    sd: the border falls where a voxel is as likely one as the other, half-way between the two levels. Where the
    classes lie less than `p.min_separation` pooled sds apart (a faint lesion in noise), the values are smoothed
    first (Gaussian of 1, 2, 3 ... mm up to `max_smoothing_mm`, over usable voxels), until they do. Returns the
    MRF's lesion components touching the seed, enclosed holes filled, within `solid`; None when the seed is not
    darker than the ring, or EM puts the lesion class above the parenchyma."""
    sp = np.asarray(spacing_zyx, float)
    # what decides the lesion lies within the fit's reach of the seed (smoothing reads 3 sigmas further): the
    # box round that gives the same lesion as the whole array, at the cost of the box
    reach = ring_start_mm + p.context_mm + 3.0 * max_smoothing_mm + 1.0
    box = _near_box(seed, sp, reach)
    if box is None:
        return None
    found = _lesion_extent_in_box(seed[box], values[box], liver[box], usable[box], solid[box], sp, p, ring_start_mm,
                                  max_smoothing_mm)
    if found is None:
        return None
    out = np.zeros(seed.shape, bool)
    out[box] = found
    return out


def _lesion_extent_in_box(seed, values, liver, usable, solid, sp, p, ring_start_mm, max_smoothing_mm):
    """`lesion_extent` on the box round its seed: the border half-way between the pure levels (`_two_classes`), or,
    where those leave no lesion at the seed (a faint lesion whose border voxels are most of it), between the two
    classes as fitted."""
    d = geometry.distance_to_mm(seed, sp, ring_start_mm + p.context_mm)
    ring = usable & (d > ring_start_mm) & (d <= ring_start_mm + p.context_mm)
    if ring.sum() < 20:
        return None
    fit = liver & usable & (d <= ring_start_mm + p.context_mm)
    for partial_volume in (True, False):
        lesion = _lesion_at_levels(seed, values, ring, fit, usable, solid, sp, p, max_smoothing_mm, partial_volume)
        if lesion is not None:
            return lesion
    return None


def _lesion_at_levels(seed, values, ring, fit, usable, solid, sp, p, max_smoothing_mm, partial_volume: bool):
    """The lesion at a seed from its two levels (`_two_classes`; values smoothed until they separate) and the MRF;
    None when the levels cannot be fitted or no lesion voxel touches the seed."""
    from .tissue_model import MixtureModel, mrf_regularise, posteriors

    sigma = 0.0
    while True:
        vals = _smoothed(values, usable, sigma, sp) if sigma > 0 else values
        classes = _two_classes(vals, seed, ring, fit, usable, sp, sigma if partial_volume else None)
        if classes is None:
            return None
        means, pooled = classes
        if (means[1] - means[0]) / pooled >= p.min_separation or sigma + 1.0 > max_smoothing_mm:
            break
        sigma += 1.0
    model = MixtureModel(means_hu=means, sds_hu=np.full(2, pooled), weights=np.array([0.5, 0.5]),
                         names=["lesion", "parenchyma"], log_likelihood=0.0, n_iter=0)
    q = mrf_regularise(posteriors(vals, model, fit), beta=p.mrf_beta, iterations=5, mask=fit)
    lesion = fit & (q[0] > q[1])
    lab, _ = ndimage.label(lesion)
    touching = np.unique(lab[seed & lesion])
    touching = touching[touching > 0]
    if touching.size == 0:
        return None
    return geometry.fill_enclosed(np.isin(lab, touching)) & solid


def _two_classes(values, seed, ring, fit, usable, spacing_zyx, smoothing_mm: float | None = 0.0):
    """EM of two Gaussian classes on the `fit` voxels, started at the seed's darker-than-ring voxels and the ring,
    then their pure levels where the border explains the voxels between them (`partial_volume_em`,
    `border_explains_mixed`; `smoothing_mm`: the Gaussian sigma the values were smoothed with, None for the two
    classes as fitted): (means (lesion, parenchyma), pooled sd), or None when the seed is not darker or the classes
    swap."""
    from .tissue_model import _em, _histogram

    level = float(np.median(values[ring]))
    core = seed & usable & (values < level)
    if core.sum() < 3:
        return None
    spread = max(1.4826 * float(np.median(np.abs(values[ring] - level))), 1.0)
    x, w = _histogram(values[fit].astype(np.float64), 0.25)
    means, sds, weights, *_ = _em(x, w, np.array([float(np.median(values[core])), level]), np.array([spread, spread]),
                                  np.array([0.5, 0.5]), 200, 1e-7, 0.25)
    if not means[0] < means[1]:
        return None
    if smoothing_mm is not None:
        pure_means, pure_sds, shares = partial_volume_em(x, w, means, sds, weights)
        if pure_means[0] < pure_means[1] and border_explains_mixed(shares, float(w.sum()), spacing_zyx,
                                                                   smoothing_mm):
            means, sds, weights = pure_means, pure_sds, shares[:2] / shares[:2].sum()
    return means, float(np.sqrt(np.sum(weights * sds ** 2) / np.sum(weights)))


def partial_volume_em(x: np.ndarray, w: np.ndarray, means: np.ndarray, sds: np.ndarray, weights: np.ndarray,
                      iterations: int = 100, tol_hu: float = 1e-3):
    """EM of two pure classes (lesion, parenchyma) and the partial-volume voxels of the border between them, on a
    weighted histogram (centres `x`, weights `w`), started at a two-class fit (`means`, `sds`, `weights`).

    A border voxel holds both tissues in any proportion, so its value lies anywhere between the two levels: its
    class is modelled as a Gaussian at the mid-level whose variance is the pooled noise plus that of a uniform
    spread over the gap, (Δ²/12). Without it a small lesion's border voxels, many against its interior, pull the
    lesion class towards the parenchyma and the half-way border outwards. Returns the pure classes' means and
    sds, and the shares of (lesion, parenchyma, border) voxels."""
    means, sds = np.asarray(means, float).copy(), np.asarray(sds, float).copy()
    share = np.array([weights[0], weights[1], 0.2])
    share /= share.sum()
    for _ in range(iterations):
        pooled_var = float(np.sum(share[:2] * sds ** 2) / np.sum(share[:2]))
        mu = np.array([means[0], means[1], 0.5 * (means[0] + means[1])])
        var = np.array([sds[0] ** 2, sds[1] ** 2, pooled_var + (means[1] - means[0]) ** 2 / 12.0])
        logp = np.log(share)[:, None] - 0.5 * np.log(var)[:, None] - (x[None] - mu[:, None]) ** 2 / (2 * var[:, None])
        resp = np.exp(logp - logp.max(axis=0))
        resp *= w[None] / resp.sum(axis=0)
        nk = resp.sum(axis=1) + 1e-12
        new = (resp[:2] @ x) / nk[:2]
        sds = np.sqrt((resp[:2] * (x[None] - new[:, None]) ** 2).sum(axis=1) / nk[:2] + 0.25)
        share = nk / nk.sum()
        done = np.allclose(new, means, atol=tol_hu)
        means = new
        if done:
            break
    return means, sds, share


BORDER_SHELL_VOXELS = 3.0  # the partial-volume shell of a border (10-90 % of the step) is at most this many voxels thick
GAUSSIAN_10_90_SIGMAS = 2.56  # a step blurred by a Gaussian rises from 10 to 90 % over this many sigmas


def border_explains_mixed(shares: np.ndarray, n_voxels: float, spacing_zyx, smoothing_mm: float = 0.0) -> bool:
    """Whether the voxels a partial-volume fit calls mixed (`shares`: lesion, parenchyma, border, of `n_voxels`)
    could be the border of its lesion: the shell of thickness t centred on the surface of a ball of radius r holds
    ((r + t/2)³ - (r - t/2)³) / r³ times its volume (about 3t/r for a large one), so more mixed voxels than a
    shell of `BORDER_SHELL_VOXELS` voxels (widened by the smoothing of the values, `smoothing_mm` sigma) round the
    lesion holds are its interior's heterogeneity (a haemangioma's nodules, a necrotic core's gradations), and its
    pure level is not the fit's. A lesion class emptied by the fit is no lesion level either."""
    voxel_mm3 = float(np.prod(np.asarray(spacing_zyx, float)))
    lesion = shares[0] * n_voxels + 0.5 * shares[2] * n_voxels
    if shares[0] * n_voxels < 3:
        return False
    shell = BORDER_SHELL_VOXELS * voxel_mm3 ** (1.0 / 3.0) + GAUSSIAN_10_90_SIGMAS * smoothing_mm
    r = max(equivalent_radius_mm(int(round(lesion)), voxel_mm3), 1e-6)
    shell_to_ball = ((r + 0.5 * shell) ** 3 - max(r - 0.5 * shell, 0.0) ** 3) / r ** 3
    return shares[2] * n_voxels <= lesion * shell_to_ball


def add_rim(lesion: np.ndarray, values: np.ndarray, usable: np.ndarray, free: np.ndarray, spacing_zyx, null_sd,
            p: LesionParameters) -> np.ndarray:
    """The lesion extended out through an enhancing rim, capsule or nodular periphery (module docstring, step 4).

    The 1 mm shells of `free` voxels round it (bright nodules included) out to `rim_fraction` of its equivalent
    radius (at least `rim_mm`, at most `rim_max_mm`: a haemangioma's peripheral band widens with it) whose voxels
    average more than the parenchyma beyond (from 2 to 8 mm past that reach) by `p.rim_z` times `null_sd` of a
    region of the shell's size, and that are brighter than it in at least `p.rim_closure` of the 26 directions (a
    ring, not a vessel passing on one side), join it as far as they stay so; the first shell may be the
    partial-volume step between a dark core and its rim."""
    sp = np.asarray(spacing_zyx, float)
    if p.rim_mm <= 0:
        return lesion
    voxel_mm3 = float(np.prod(sp))
    reach = float(np.clip(p.rim_fraction * equivalent_radius_mm(int(lesion.sum()), voxel_mm3), p.rim_mm, p.rim_max_mm))
    # everything below lies within reach + 8 mm of the lesion: the box round it (that of `distance_to_mm`, beyond
    # which the distance is +inf) gives the same shells, ring and result as the whole array, at the box's cost
    box = _near_box(lesion, sp, reach + 8.0)
    if box is None:
        return lesion
    lesion_b, values_b, free_b = lesion[box], values[box], free[box]
    d = geometry.distance_to_mm(lesion_b, sp, reach + 8.0)
    ring = usable[box] & free_b & (d > reach + 2.0) & (d <= reach + 8.0)
    if ring.sum() < 20:
        return lesion
    level = float(np.median(values_b[ring]))
    shifted = values_b - level
    last = -1
    for k in range(int(reach)):
        shell = free_b & (d > k) & (d <= k + 1)
        n = int(shell.sum())
        if n < 10:
            break
        z = (float(values_b[shell].mean()) - level) / null_sd(equivalent_radius_mm(n, voxel_mm3))
        closed = geometry.ring_closure(shifted, shell, lesion_b, sp, 0.0) >= p.rim_closure
        if z >= p.rim_z and closed:
            last = k
        elif k > 0:
            break
    if last < 0:
        return lesion
    grown = lesion.copy()
    grown[box] |= free_b & (d <= last + 1)
    return geometry.fill_enclosed(grown)


def add_attached_bright(lesion: np.ndarray, bright: np.ndarray, free: np.ndarray, spacing_zyx,
                        p: LesionParameters) -> np.ndarray:
    """The lesion with the bright blobs that lie against it: calcifications, lipiodol, a haemangioma's peripheral
    nodules. A connected bright component of `free` voxels (`bright`: above the parenchyma's peak by `bright_sd`
    of its sds) that comes within 1.5 mm of the lesion joins it when none of its voxels lies farther than the
    lesion's equivalent radius (at least `rim_mm`, at most 15 mm) from it: a vessel passing by runs on beyond."""
    sp = np.asarray(spacing_zyx, float)
    reach = float(np.clip(equivalent_radius_mm(int(lesion.sum()), float(np.prod(sp))), p.rim_mm, 15.0))
    # on the box round the lesion beyond which the distance is +inf: a blob crossing its faces holds voxels there
    # and is not kept, as on the whole array, and one inside it is the same blob
    box = _near_box(lesion, sp, reach + 1.0)
    if box is None:
        return lesion
    whole, lesion = lesion, lesion[box]
    d = geometry.distance_to_mm(lesion, sp, reach + 1.0)  # +inf farther: a blob reaching there is not kept
    blobs, n = ndimage.label(bright[box] & free[box] & ~lesion)
    if n == 0:
        return whole
    near = np.unique(blobs[(d <= 1.5) & (blobs > 0)])
    if near.size == 0:
        return whole
    # a blob whose farthest voxel lies within the reach is one with no voxel beyond it (the same blobs as
    # ndimage.maximum over each blob, without its pass over every label)
    beyond = np.zeros(n + 1, bool)
    beyond[blobs[(d > reach) & (blobs > 0)]] = True
    keep = near[~beyond[near]]
    if not keep.size:
        return whole
    out = whole.copy()
    out[box] |= np.isin(blobs, keep)
    return out


def _close_heterogeneous(piece: np.ndarray, allowed: np.ndarray, spacing_zyx, p: LesionParameters) -> np.ndarray:
    """A lesion closed by a ball of `p.close_fraction` of its equivalent radius (at most `p.close_max_mm`) within
    `allowed`, holes filled: the dark parts of a heterogeneous mass and what lies between them are one lesion."""
    sp = np.asarray(spacing_zyx, float)
    radius = min(p.close_fraction * equivalent_radius_mm(int(piece.sum()), float(np.prod(sp))), p.close_max_mm)
    if radius < float(sp.min()):
        return piece
    # the closing lies within the radius of the piece: on the box round it, with background on every face, the
    # closing and its holes are those of the whole array
    box = geometry.bounding_box(piece, np.ceil(radius / sp).astype(int) + 2)
    out = piece.copy()
    out[box] |= geometry.fill_enclosed(geometry.close_mm(piece[box], radius, sp) & allowed[box]) & allowed[box]
    return out


# ------------------------------------------------------------------------------------- detection


def working_factors(spacing_zyx, working_mm: float) -> np.ndarray:
    """Block factors (z, y, x) that bring in-plane voxels to about `working_mm` (slices kept)."""
    sp = np.asarray(spacing_zyx, float)
    return np.array([1] + [max(1, int(round(working_mm / s))) for s in sp[1:]])


@dataclass
class _Significance:
    """Per-scale z minus its bound on the working grid (blocks of `factors` voxels), the voxels significant at
    some scale and the support (the significant boxes, widened by `support_margin_mm`) on the full grid."""

    excess: list[np.ndarray]
    factors: np.ndarray
    significant: np.ndarray
    support: np.ndarray


def _significance(values: np.ndarray, liver: np.ndarray, ref: Reference, spacing_zyx, p: LesionParameters,
                  null: list[ScaleStatistics] | None = None):
    """Contrast evidence on the working grid and its significant voxels and boxes (steps 2 and 3's support; `null`:
    the null statistics to measure against, None to measure them, `contrast_evidence`)."""
    sp = np.asarray(spacing_zyx, float)
    f = working_factors(sp, p.working_mm)
    if np.any(f > 1):
        work_values, _ = block_means(values, liver, f)
        work_ref = block_majority(ref.reference, f, of_whole_block=True)
    else:
        work_values, work_ref = values, ref.reference
    work_sp = sp * f
    z, scales = contrast_evidence(work_values, work_ref, work_sp, p, null)
    significant = np.zeros(work_values.shape, bool)
    support = np.zeros(work_values.shape, bool)
    for zs, scale in zip(z, scales):
        sig = work_ref & (zs >= scale.bound_z)
        if sig.any():
            significant |= sig
            box = centre_box_voxels(scale.radius_mm, work_sp)
            support |= ndimage.uniform_filter(sig.astype(np.float32), size=tuple(int(v) for v in box)) > 1e-3
    shape = values.shape
    excess = [zs - scale.bound_z for zs, scale in zip(z, scales)]
    significant = _upsample(significant, f, shape) & ref.reference
    # within the margin of the significant boxes: the distance on the box round them (not over the whole array)
    support = geometry.distance_to_mm(_upsample(support, f, shape), sp, p.support_margin_mm) <= p.support_margin_mm
    return _Significance(excess, f, significant, support), scales


def _significance_near(near: np.ndarray, values: np.ndarray, liver: np.ndarray, ref: Reference, spacing_zyx,
                       p: LesionParameters, null: list[ScaleStatistics]) -> _Significance:
    """`_significance` against the given null, computed only on the box round the `near` voxels widened by what
    the largest scale's box and ring read twice over (its seeds' own boxes are whole); nothing is significant
    outside that box. The box starts and ends on the working grid's blocks, so its blocks are the whole grid's."""
    sp = np.asarray(spacing_zyx, float)
    f = working_factors(sp, p.working_mm)
    reach_mm = 2.0 * (0.806 * max(p.radii_mm) + p.gap_mm + p.ring_mm) + p.support_margin_mm
    box = geometry.bounding_box(near, np.ceil(reach_mm / sp).astype(int))
    if box is None:
        box = tuple(slice(0, 0) for _ in values.shape)
    shape = values.shape
    box = tuple(slice(s.start // k * k, min(n, -(-s.stop // k) * k)) for s, k, n in zip(box, f, shape))
    crop = replace(ref, **{name: getattr(ref, name)[box] for name in ("solid", "usable", "reference", "interior",
                                                                     "bright", "fat")})
    part, _ = _significance(values[box], liver[box], crop, sp, p, null=null)
    work_shape = tuple(-(-n // k) for n, k in zip(shape, f))
    at = tuple(slice(s.start // k, s.start // k + n) for s, k, n in zip(box, f, part.excess[0].shape))
    excess = []
    for e in part.excess:
        full = np.full(work_shape, -np.inf, np.float32)
        full[at] = e
        excess.append(full)
    significant = np.zeros(shape, bool)
    significant[box] = part.significant
    support = np.zeros(shape, bool)
    support[box] = part.support
    return _Significance(excess, f, significant, support)


def _best_scale(sig: _Significance, box, seed: np.ndarray) -> tuple[int, float]:
    """The scale at which a seed (bool array of the full grid's `box`) is most significant, and its z minus the
    bound there."""
    blocks = tuple((idx + s.start) // int(k) for idx, s, k in zip(np.nonzero(seed), box, sig.factors))
    best = [float(e[blocks].max()) for e in sig.excess]
    k = int(np.argmax(best))
    return k, best[k]


def _ring_start_mm(seed: np.ndarray, radius_mm: float, spacing_zyx) -> float:
    """Where the parenchyma ring of a seed's extent starts (mm from the seed): beyond the seed's scale `radius_mm`,
    less what the seed itself already covers, and at least 3 mm."""
    r_seed = equivalent_radius_mm(int(seed.sum()), float(np.prod(np.asarray(spacing_zyx, float))))
    return max(3.0, 0.8 * radius_mm + 2.0 - r_seed)


def _grow_seed(seed_box, seed: np.ndarray, values: np.ndarray, liver: np.ndarray, ref: Reference, taken: np.ndarray,
               support: np.ndarray, radius_mm: float, spacing_zyx, p: LesionParameters, null_sd,
               split: bool = True) -> list[np.ndarray]:
    """The lesions round one seed (arrays of its box): the extent (values smoothed, where the lesion is faint, by up
    to `smooth_fraction` of the seed's scale `radius_mm`), cut to the support, reaching into the border band only
    next to its own interior, split into pieces; each piece given the bright blobs against it and its rim, and
    closed (heterogeneous masses). `taken`: voxels of lesions already found (nonzero; the whole grid). Returns bool
    masks of the box.
    A seed is where the contrast is significant, and it can span two regions of different darkness that touch (a
    lesion beside darker tissue: a hilum's fat and vessels taken in by the liver mask, a cyst beside a solid
    tumour). The two-class fit round it then takes the darker as the lesion, and the other falls on the
    parenchyma's side. Where more of the seed lies beyond the extent and its partial-volume shell (half of
    `BORDER_SHELL_VOXELS` beyond its border) than within the extent, and that part is darker than the parenchyma by its sd, it is
    grown on its own with the first extent left out of its fit: each region is judged against the parenchyma,
    not against the other. `split=False`: no such second region (a clicked lesion's seed is a ball round the
    click, not a region of significant contrast)."""
    sp = np.asarray(spacing_zyx, float)
    b = seed_box
    taken_box = taken[b] != 0
    vals = values[b]
    smoothing = min(p.smooth_fraction * radius_mm, p.smooth_max_mm)
    extent = lesion_extent(seed, vals, liver[b], ref.usable[b], ref.solid[b], sp, p, _ring_start_mm(seed, radius_mm, sp),
                           max_smoothing_mm=smoothing)
    if extent is None:
        return []
    # the rest of the seed beyond the extent's partial-volume shell (a dark lesion's halo of mixed voxels, half of a
    # border's shell beyond its half-way point, is not another region), darker than the parenchyma by its sd
    within = int((seed & extent).sum())
    if split and (seed & ~extent).sum() > within:  # else the rest, a part of it, cannot outweigh the extent
        shell_mm = 0.5 * BORDER_SHELL_VOXELS * float(sp.max())
        rest = seed & ref.usable[b] & (geometry.distance_to_mm(extent, sp, shell_mm + 1.0) > shell_mm)
        if rest.sum() > within and np.median(vals[rest]) < ref.level_hu - ref.sd_hu:
            other = lesion_extent(rest, vals, liver[b] & ~extent, ref.usable[b] & ~extent, ref.solid[b], sp, p,
                                  _ring_start_mm(rest, radius_mm, sp), max_smoothing_mm=smoothing)
            if other is not None:
                extent = extent | other  # one lesion where they touch (a solid rim round a necrotic core)
    return _pieces(extent, seed, vals, liver[b] & ~taken_box, taken_box, support[b], ref, b, sp, p, null_sd)


def _pieces(extent: np.ndarray, seed: np.ndarray, vals: np.ndarray, free: np.ndarray, taken_box: np.ndarray,
            support: np.ndarray, ref: Reference, b, sp, p: LesionParameters, null_sd) -> list[np.ndarray]:
    """`_grow_seed`'s lesions of one extent (arrays of the seed's box `b`): cut to the support and to the border
    band next to its interior, split into pieces that touch the seed, each with its bright blobs and rim, closed."""
    extent = extent & support & ~taken_box
    inside = extent & ref.interior[b]
    if not inside.any():
        return []
    extent &= geometry.distance_to_mm(inside, sp / ref.band_mm, 1.0) <= 1.0
    pieces, n = ndimage.label(extent)
    out = []
    for j in range(1, n + 1):
        piece = pieces == j
        if not (piece & seed).any():
            continue
        piece = add_attached_bright(piece, ref.bright[b], free, sp, p)
        piece = add_rim(piece, vals, ref.usable[b], free, sp, null_sd, p) & ~taken_box
        piece = _close_heterogeneous(piece, free & ~ref.fat[b], sp, p)
        out.append(piece)
    return out


def _wrapped_in_fat(piece: np.ndarray, values: np.ndarray, spacing_zyx, width_mm: float = 2.5) -> float:
    """Share of the shell `width_mm` round a region that is fat (below FAT_HU): a lesion lies against parenchyma,
    the gallbladder and bowel that a liver mask took in lie in their own fat."""
    box = _near_box(piece, spacing_zyx, width_mm)
    if box is None:
        return 0.0
    d = geometry.distance_to_mm(piece[box], spacing_zyx, width_mm)
    shell = (d > 0) & (d <= width_mm)
    return float((values[box][shell] < FAT_HU).mean()) if shell.any() else 0.0


def _near_box(mask: np.ndarray, spacing_zyx, limit_mm: float):
    """The box round `mask` beyond which `geometry.distance_to_mm(mask, spacing_zyx, limit_mm)` is +inf (None when
    `mask` is empty): what lies within `limit_mm` of a lesion is found on it at the cost of the box."""
    return geometry.bounding_box(mask, np.ceil(limit_mm / np.asarray(spacing_zyx, float)).astype(int) + 1)


def _contrast_hu(piece: np.ndarray, values: np.ndarray, usable: np.ndarray, free: np.ndarray, spacing_zyx) -> float:
    """Median of the usable free liver 2-8 mm round a lesion minus the mean of its usable voxels (HU; NaN when
    either is nearly empty)."""
    box = _near_box(piece, spacing_zyx, 8.0)
    if box is None:
        return float("nan")
    d = geometry.distance_to_mm(piece[box], spacing_zyx, 8.0)
    ring = usable[box] & free[box] & (d > 2.0) & (d <= 8.0)
    inside = piece[box] & usable[box]
    if ring.sum() < 10 or not inside.any():
        return float("nan")
    return float(np.median(values[box][ring]) - values[box][inside].mean())


def detect_lesions(values: np.ndarray, liver: np.ndarray, spacing_zyx, p: LesionParameters | None = None,
                   progress=None) -> LesionDetection:
    """Lesion instances of a (denoised) CT inside a liver mask (module docstring).

    values: HU [z, y, x] (float); liver: bool mask of the same shape; spacing_zyx: voxel sizes in mm.
    Returns a LesionDetection whose labels have the input's shape.
    """
    p = p or LesionParameters()
    p.validate()
    sp = np.asarray(spacing_zyx, float)
    values = np.asarray(values, np.float32)
    liver = np.asarray(liver, bool)
    if not liver.any():
        raise InputError("The liver mask is empty; nothing to search for lesions in.")
    ref = reference_parenchyma(values, liver, sp, p)
    if progress is not None:
        progress(0.2, "lesions: contrast at every size")
    sig, scales = _significance(values, liver, ref, sp, p)
    if p.false_alarms == 0:  # no automatic detection: the null statistics only, for clicked lesions
        return LesionDetection(np.zeros(liver.shape, np.uint16), [], scales, ref.level_hu, ref.sd_hu)
    labels = np.zeros(liver.shape, np.int32)
    evidence: dict[int, dict] = {}
    _grow_significant(sig, scales, values, liver, ref, sp, p, labels, evidence,
                      progress=None if progress is None else lambda f, m: progress(0.4 + 0.4 * f, m))
    if evidence:
        # a second look where significant contrast is left that the lesions found (and their partial-volume
        # shell) do not explain, with them left out of the contrast's boxes and of the extents' fits, against the
        # same null: a lesion beside a darker one (a tumour beside a cyst) is measured against the parenchyma, not
        # hidden by its neighbour's contrast
        found = labels > 0
        away = ~geometry.dilate_mm(found, BORDER_SHELL_VOXELS * float(sp.max()), sp)
        unexplained = sig.significant & away
        if unexplained.any():
            beside = replace(ref, reference=ref.reference & away, usable=ref.usable & ~found)
            if progress is not None:
                progress(0.8, "lesions: beside those found")
            sig = _significance_near(unexplained, values, liver, beside, sp, p, scales)
            _grow_significant(sig, scales, values, liver, beside, sp, p, labels, evidence)
    labels = labels.astype(np.uint16)
    lut = volume_order(labels)
    order = lut[labels]
    # every voxel of an instance gets its new id: the rows follow the lookup table (0: the instance is empty)
    rows = [{"id": int(lut[old_id]), **row} for old_id, row in evidence.items()
            if old_id < lut.size and lut[old_id] > 0]
    return LesionDetection(order, sorted(rows, key=lambda r: r["id"]), scales, ref.level_hu, ref.sd_hu)


def _grow_significant(sig: _Significance, scales: list[ScaleStatistics], values: np.ndarray, liver: np.ndarray,
                      ref: Reference, sp: np.ndarray, p: LesionParameters, labels: np.ndarray, evidence: dict,
                      progress=None) -> None:
    """Grow lesions from the significant voxels of `sig` into `labels` (int32, in place; `evidence` gets a row per
    new lesion): seeds by decreasing significance, each skipped when mostly inside a lesion already grown; a piece
    touching a lesion already grown joins it, a new one needs `p.min_volume_mm3`, positive contrast and not to lie
    in fat."""
    null_sd = _null_sd_at(scales)
    voxel_mm3 = float(np.prod(sp))
    seeds, _ = ndimage.label(sig.significant)
    objects = ndimage.find_objects(seeds)
    ranked = []  # seeds by decreasing significance: a lesion grows from its strongest seed first
    for i, sl in enumerate(objects, start=1):
        if sl is not None:
            scale, excess = _best_scale(sig, sl, seeds[sl] == i)
            ranked.append((excess, i, sl, scale))
    ranked.sort(key=lambda item: -item[0])
    for count, (excess, i, sl, scale) in enumerate(ranked):
        if progress is not None and count % 10 == 0:
            progress(count / len(ranked), "lesions: extents")
        seed = seeds[sl] == i
        if (labels[sl][seed] > 0).mean() > 0.5:
            continue  # inside a lesion grown from a stronger seed
        radius = p.radii_mm[scale]
        pad = np.ceil((0.8 * radius + 2.0 + p.context_mm + max(p.rim_mm, p.rim_max_mm) + 10.0) / sp).astype(int)
        box = geometry.widen(sl, pad, liver.shape)
        taken = labels[box] > 0
        for piece in _grow_seed(box, seeds[box] == i, values, liver, ref, labels, sig.support, radius, sp, p,
                                null_sd):
            target = labels[box]
            near = geometry.bounding_box(piece, 1)  # the dilation by one voxel lies in the piece's box widened by one
            if near is None:
                continue  # an empty piece (no contrast to measure)
            touching = np.unique(target[near][ndimage.binary_dilation(piece[near]) & taken[near]])
            touching = touching[touching > 0]
            if touching.size:  # what a weaker seed adds to a lesion already found is that lesion's
                target[piece & (target == 0)] = int(touching[0])
                continue
            contrast = _contrast_hu(piece, values[box], ref.usable[box], liver[box] & ~taken, sp)
            if piece.sum() * voxel_mm3 < p.min_volume_mm3 or not contrast > 0:
                continue
            if _wrapped_in_fat(piece, values[box], sp) > p.max_fat_wrap:
                continue  # the gallbladder or bowel in its fat, taken in by the liver mask: no liver lesion
            new_id = len(evidence) + 1
            target[piece & (target == 0)] = new_id
            evidence[new_id] = {"contrast_hu": contrast, "evidence_z": excess + scales[scale].bound_z,
                                "scale_mm": p.radii_mm[scale]}


def extend_beyond_liver(values: np.ndarray, liver: np.ndarray, labels: np.ndarray, spacing_zyx,
                        reach_mm: tuple[float, float] = (10.0, 40.0), bulge_mm: float = BULGE_MM) -> np.ndarray:
    """Lesions cut by the border of an extracted liver, continued beyond it: a tumour at the surface is the liver's.

    An extracted liver follows the parenchyma, so a tumour at or bulging from the surface is left partly outside
    it. For each lesion with voxels on the liver's border, the ball it is part of is fitted to its interface with
    the parenchyma (`_interface_ball`; a tumour is round where it meets the liver): the voxels beyond the liver
    inside that ball (2 mm more), or in the bite the lesion makes in the liver's outline (the outline closed by a
    ball of the lesion's equivalent radius within `reach_mm`, continued beyond the image's faces where the liver
    reaches them, `_closed_beyond_faces`), with the lesion's own intensities (from 2.5 of its robust sds below
    its median up to the middle between its median and the parenchyma round it: fat, a darker neighbour's fluid
    and vessels are out), that connect to the lesion, join it. A tumour that bulges from a smooth stretch of the
    outline makes no bite: there the lesion goes on (`_thick_continuation`) into voxels of its intensities within
    its reach beyond the liver where, with the lesion, they are thick enough to hold a ball of `bulge_mm` (a
    mass; the diaphragm, the abdominal wall's muscles and the bowel's wall are sheets thinner than that), round
    after round from what it reached, until it stops growing; a continuation whose median is fluid (below
    `FLUID_HU`: the gallbladder or bowel beside a lesion at the border) or darker than the lesion's median by more
    than its robust sd (a neighbour's tissue) is not the solid tumour's and is left out (fluid at the surface is
    the liver extraction's to judge). values: HU [z, y, x]; liver: bool; labels:
    lesion instances (uint16). Returns new instance labels (the liver is the input liver plus every lesion
    voxel)."""
    sp = np.asarray(spacing_zyx, float)
    # every lesion's box lies within the box round all lesions widened by the largest box margin: work there
    outer = geometry.bounding_box(labels > 0, np.ceil((2.5 * reach_mm[1] + 3.0) / sp).astype(int) + 1)
    if outer is None:
        return labels.copy()
    out = labels.copy()
    if any(s.stop - s.start < n for s, n in zip(outer, labels.shape)):
        _extend_in_box(values[outer], liver[outer], labels[outer], out[outer], sp, reach_mm, bulge_mm, outer,
                       labels.shape)
    else:
        _extend_in_box(values, liver, labels, out, sp, reach_mm, bulge_mm, None, labels.shape)
    return out


def _extend_in_box(values, liver, labels, out, sp, reach_mm, bulge_mm, outer, image_shape) -> None:
    """`extend_beyond_liver` on the box `outer` of an image of `image_shape` (None: the whole image), written into
    `out` (the labels' copy on that box)."""
    six = ndimage.generate_binary_structure(3, 1)
    voxel_mm3 = float(np.prod(sp))
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        # the liver's border voxels (those with a face neighbour outside it) in the lesion's box: the erosion on the
        # box widened by one voxel, which holds every neighbour it reads
        wide = geometry.widen(sl, 1, labels.shape)
        inner = tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(sl, wide))
        border = liver[sl] & ~ndimage.binary_erosion(liver[wide], structure=six, border_value=1)[inner]
        if not (border & (labels[sl] == i)).any():
            continue
        r_eq = equivalent_radius_mm(int((labels[sl] == i).sum()), voxel_mm3)
        radius = float(np.clip(r_eq, *reach_mm))
        box = geometry.widen(sl, np.ceil((2.5 * radius + 3.0) / sp).astype(int), labels.shape)
        lesion = out[box] == i
        vals, inside = values[box], liver[box]
        ring = inside & (out[box] == 0) & (geometry.distance_to_mm(lesion, sp, 8.0) <= 8.0)
        if ring.sum() < 20:
            continue
        level = float(np.median(vals[lesion]))
        spread = 1.4826 * float(np.median(np.abs(vals[lesion] - level))) + 1.0
        parenchyma = float(np.median(vals[ring]))
        if not level < parenchyma:
            continue
        faces = box if outer is None else tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(box, outer))
        region = _closed_beyond_faces(inside | lesion, faces, image_shape, radius, sp)
        beyond = ~inside & (out[box] == 0)
        floor = max(level - 2.5 * spread, FAT_HU)
        like = beyond & (vals >= floor) & (vals <= 0.5 * (level + parenchyma))
        ball = _interface_ball(lesion, ring, sp, r_eq, beyond=beyond, own=like,
                               displaced=beyond & (vals >= FAT_HU) & (vals < floor))
        if ball is not None:
            region |= ball
        grown = lesion | _connected_to(region & like, lesion)
        if bulge_mm > 0:
            bulge = _thick_continuation(grown, like, sp, radius, bulge_mm)
            # the lesion's own tissue (its median within one of the lesion's robust sds), and no fluid: the
            # gallbladder or bowel beside a lesion at the border is darker
            if bulge.any() and np.median(vals[bulge]) >= max(level - spread, FLUID_HU):
                grown |= bulge
        out[box][grown & ~lesion] = i


def _thick_continuation(lesion: np.ndarray, like: np.ndarray, spacing_zyx, reach_mm: float,
                        bulge_mm: float) -> np.ndarray:
    """What a lesion cut by the liver's border goes on into: voxels of `like` (outside the liver, of the lesion's
    intensities) within `reach_mm` of it that lie, with the lesion, in its opening by a ball of `bulge_mm`
    (`geometry.open_mm`: only thick parts; a sheet beside the lesion is cut off) and connect to it; repeated from
    what was reached (at most `BULGE_ROUNDS` rounds) until a round adds nothing. Each round reaches no farther from
    the centre of what it grows from than `BULGE_MAX_RADII` of its equivalent radii: a tumour is a compact mass
    (a 3:1 ellipsoid's tip lies 2.1 equivalent radii from its centre), while the abdominal wall's muscles and the
    bowel beside the liver run on as long layers and loops, which otherwise take the lesion's place round after
    round where their intensity is the lesion's. The rounds work on blocks of
    about a quarter of the ball's radius (a ball of 6 mm needs no finer grid); what they reach is then taken at
    full resolution (the `like` voxels there that connect to the lesion). Returns the added voxels (bool)."""
    sp = np.asarray(spacing_zyx, float)
    six = ndimage.generate_binary_structure(3, 1)
    near = geometry.bounding_box(lesion, 1)
    if near is None or not (like[near] & ndimage.binary_dilation(lesion[near], structure=six)).any():
        return np.zeros(lesion.shape, bool)  # nothing of its intensities touches it beyond the liver
    f = working_factors(sp, bulge_mm / 4.0)
    coarse = np.any(f > 1)
    grown = block_majority(lesion, f) if coarse else lesion.copy()
    if not grown.any():
        return np.zeros(lesion.shape, bool)  # thinner than a block: no bulge of a mass
    like_c = block_majority(like, f) if coarse else like
    sp_c = sp * f
    n_lesion = int(grown.sum())
    for _ in range(BULGE_ROUNDS):
        # what a round reads lies within its reach (and the ball's width more for the opening) of the lesion
        box = _near_box(grown, sp_c, reach_mm + 2.0 * bulge_mm)
        g = grown[box]
        candidate = (geometry.distance_to_mm(g, sp_c, reach_mm) <= reach_mm) & like_c[box] & ~g
        candidate &= _within_radii_of_centre(g, sp_c, BULGE_MAX_RADII)
        if not candidate.any():
            break
        added = _connected_to(geometry.open_mm(candidate | g, bulge_mm, sp_c) & candidate, g)
        if not added.any() or (grown.sum() + added.sum()) > (1.0 + BULGE_MAX_SHARE) * n_lesion:
            break  # nothing more, or more beyond the liver than `BULGE_MAX_SHARE` of the lesion: a neighbour
        grown[box] |= added
    return _connected_to((_upsample(grown, f, lesion.shape) if coarse else grown) & like & ~lesion, lesion)


def _within_radii_of_centre(mask: np.ndarray, spacing_zyx, radii: float) -> np.ndarray:
    """The voxels (bool, the mask's shape) within `radii` times the mask's equivalent radius of its centroid."""
    sp = np.asarray(spacing_zyx, float)
    points = np.argwhere(mask)
    radius = radii * equivalent_radius_mm(len(points), float(np.prod(sp)))
    return _squared_distance_mm(mask.shape, sp, points.mean(axis=0) * sp) <= radius ** 2


def _squared_distance_mm(shape, spacing_zyx, centre_mm) -> np.ndarray:
    """Squared distance (mm²) of every voxel of an array of `shape` from the point `centre_mm` (index × spacing,
    z, y, x), by broadcasting the axes' terms."""
    grid = np.indices(shape, sparse=True)
    return sum(((g * s) - c) ** 2 for g, s, c in zip(grid, spacing_zyx, centre_mm))


def _connected_to(region: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The voxels of `region` in the face-connected components of `region | seed` that hold a voxel of `seed`
    (bool arrays of one shape): what joins a lesion through what it may take."""
    if not region.any():
        return region
    pieces, _ = ndimage.label(region | seed)
    keep = np.unique(pieces[seed])
    return region & np.isin(pieces, keep[keep > 0])


def _interface_ball(lesion: np.ndarray, parenchyma: np.ndarray, spacing_zyx, r_eq: float,
                    margin_mm: float = 2.0, beyond: np.ndarray | None = None, own: np.ndarray | None = None,
                    displaced: np.ndarray | None = None, min_own: float = BALL_MIN_OWN) -> np.ndarray | None:
    """The ball (bool mask, widened by `margin_mm`) fitted by least squares to the voxels of the lesion that touch
    the parenchyma round it; None when fewer than 20 touch or the fit is not a ball of 0.7-2.5 times the lesion's
    equivalent radius `r_eq` whose centre lies within its radius of the lesion's voxels, or, given `beyond` (the
    voxels beyond the liver that no other lesion has taken), `own` (those of the lesion's own intensities) and
    `displaced` (soft tissue darker than those, not fat), when less than `min_own` of the ball's part in `beyond` is
    of the lesion's intensities and the rest of that part is mostly fat or tissue brighter than the lesion.
    A tumour that bulges from the liver fills its ball beyond the border with its own tissue, and where the fitted
    ball overshoots the bulge it reaches the soft tissue the tumour pushes against (diaphragm, abdominal wall),
    darker than an enhancing tumour and not fat. A ball whose part beyond the border is mostly fat and brighter
    tissue is not a tumour's: the fit to an irregular interface, such as the hilum's fat and vessels at a fissure
    taken for a lesion, gives a ball far larger than the lesion, reaching into the hilum, where the lesion's
    intensities are only the partial volumes of fat and vessels among it."""
    sp = np.asarray(spacing_zyx, float)
    touching = np.zeros(lesion.shape, bool)
    near = geometry.bounding_box(lesion, 1)  # the face neighbours of the lesion's voxels lie in its box widened by one
    if near is not None:
        touching[near] = lesion[near] & ndimage.binary_dilation(parenchyma[near],
                                                                structure=ndimage.generate_binary_structure(3, 1))
    points = np.argwhere(touching) * sp
    if len(points) < 20:
        return None
    design = np.column_stack([2.0 * points, np.ones(len(points))])
    solution, *_ = np.linalg.lstsq(design, (points ** 2).sum(axis=1), rcond=None)
    centre = solution[:3]
    radius_sq = float(solution[3] + centre @ centre)
    if radius_sq <= 0:
        return None
    radius = float(np.sqrt(radius_sq))
    if not 0.7 * r_eq <= radius <= 2.5 * r_eq:
        return None
    dist_sq = _squared_distance_mm(lesion.shape, sp, centre)
    if np.sqrt(float(dist_sq[lesion].min())) > radius:
        return None
    if beyond is not None and own is not None:
        outside = (dist_sq <= radius_sq) & beyond
        n_own = int((outside & own).sum())
        n_displaced = int((outside & displaced).sum()) if displaced is not None else 0
        if n_own < min_own * outside.sum() and n_displaced <= outside.sum() - n_own - n_displaced:
            return None
    return dist_sq <= (radius + margin_mm) ** 2


def _closed_beyond_faces(mask: np.ndarray, box, shape, radius_mm: float, spacing_zyx) -> np.ndarray:
    """`geometry.close_mm` of a box's mask, where the mask reaches a face of the whole image (the field of view cut
    the liver there) continued beyond that face: a bite open to the image's edge closes like any other."""
    sp = np.asarray(spacing_zyx, float)
    n = np.ceil(radius_mm / sp).astype(int) + 1
    pads = []
    for axis, (s, size) in enumerate(zip(box, shape)):
        low = n[axis] if s.start == 0 and np.take(mask, 0, axis=axis).any() else 0
        high = n[axis] if s.stop == size and np.take(mask, -1, axis=axis).any() else 0
        pads.append((low, high))
    padded = np.pad(mask, pads, mode="edge") if any(p != (0, 0) for p in pads) else mask
    factors = np.maximum(1, np.floor(radius_mm / CLOSING_STEPS_PER_RADIUS / sp)).astype(int)
    if factors.max() > 1:  # a coarser grid: a ball of that radius does not see the fine voxels
        majority = block_majority(padded, factors)
        closed = _upsample(geometry.close_mm(majority, radius_mm, sp * factors), factors, padded.shape) | padded
    else:
        closed = geometry.close_mm(padded, radius_mm, sp)
    return closed[tuple(slice(lo, closed.shape[a] - hi) for a, (lo, hi) in enumerate(pads))]


def _cut_by_context(lesion: np.ndarray, seed: np.ndarray, radius_mm: float, spacing_zyx, p: LesionParameters) -> bool:
    """Whether more than `CLICK_CUT_SHARE` of a lesion's surface lies at the edge of the context that
    `_grow_seed` reads round its seed (`lesion_extent`'s ring start plus `p.context_mm`): the lesion goes on beyond
    what its extent was read from."""
    sp = np.asarray(spacing_zyx, float)
    if not lesion.any():
        return False
    edge_mm = _ring_start_mm(seed, radius_mm, sp) + p.context_mm
    surface = lesion & ~ndimage.binary_erosion(lesion, structure=ndimage.generate_binary_structure(3, 1))
    near_edge = geometry.distance_to_mm(seed, sp, edge_mm + 1.0) >= edge_mm - 1.5 * float(sp.max())
    return float((surface & near_edge).sum()) > CLICK_CUT_SHARE * float(surface.sum())


def _border_inside_lesion(lesion: np.ndarray, values: np.ndarray, ref: Reference, spacing_zyx) -> bool:
    """Whether a lesion's border lies inside a larger dark region: the lesion's median is a parenchyma sd or more
    below the parenchyma's level (`ref.level_hu`, `ref.sd_hu`; nearer, the two levels are not told apart), and
    the usable voxels 2-5 mm outside it are nearer that median than the parenchyma's level. `lesion_extent` reads
    the parenchyma from a ring round its seed; a seed much smaller than its lesion puts that ring inside the
    lesion, and the border then falls inside it too."""
    if not lesion.any():
        return False
    d = geometry.distance_to_mm(lesion, spacing_zyx, 5.0)
    band = ref.usable & (d > 2.0) & (d <= 5.0)
    if band.sum() < 20:
        return False
    level = float(np.median(values[lesion]))
    if ref.level_hu - level < ref.sd_hu:
        return False
    return float(np.median(values[band])) < 0.5 * (level + ref.level_hu)


CLICK_CUT_SHARE = 0.1  # share of a clicked lesion's surface at the edge of its context that makes it grow on
CLICK_ROUNDS = 6  # a clicked lesion's extent is re-read from the lesion found up to this many times
CLICK_GROWTH = 1.1  # ... while it grows by more than this factor
CLICK_REACH_FACTOR = 2.5  # and reaches at most this many times the largest box radius from the click


def lesion_at_point(values: np.ndarray, liver: np.ndarray, spacing_zyx, point_zyx, p: LesionParameters | None = None,
                    taken: np.ndarray | None = None, scales: list[ScaleStatistics] | None = None) -> np.ndarray | None:
    """The lesion round a voxel that the user marked as inside a tumour, with the extent model of `detect_lesions`.

    The lesion's size is the radius at which the box centred on the point is darker than its ring by the most
    null sds (`scales`: the null statistics of the liver's detection; computed when not given); the seed is the
    usable voxels within 0.4 of that radius of the point, the lesion kept within 1.5 times it. A lesion larger
    than that reading allows (its surface at the edge of the context its extent was read from, or its border
    inside a larger dark region: `_cut_by_context`, `_border_inside_lesion`) is read again from itself as the
    seed, up to `CLICK_ROUNDS` times and `CLICK_REACH_FACTOR` times the largest box radius from the click, while
    it grows by more than `CLICK_GROWTH`. Nothing is required to be significant: the click says a lesion is
    there, so a faint one is smoothed up to half its scale before its extent is found. values: HU [z, y, x];
    liver: bool; point_zyx: voxel index; taken: voxels of lesions already found (left out). Returns a bool mask of the input's shape, or None when the point lies outside the
    liver or is not darker than the liver round it at any size (by `click_min_z` null sds: a dip of noise is no
    lesion).
    """
    p = p or LesionParameters()
    sp = np.asarray(spacing_zyx, float)
    values = np.asarray(values, np.float32)
    liver = np.asarray(liver, bool)
    point = tuple(int(v) for v in np.round(point_zyx))
    if any(not 0 <= c < n for c, n in zip(point, liver.shape)) or not liver[point]:
        return None
    taken = np.zeros(liver.shape, bool) if taken is None else taken
    reach = max(p.radii_mm) * 1.6 + p.gap_mm + p.ring_mm + p.context_mm + max(p.rim_mm, p.rim_max_mm) + 8.0
    half = np.ceil(reach / sp).astype(int)
    box = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(point, half, liver.shape))
    local = tuple(c - s.start for c, s in zip(point, box))
    ref = reference_parenchyma(values, liver, sp, p) if scales is None else None
    if scales is None:
        scales = _significance(values, liver, ref, sp, p)[1]
    ref_box = reference_parenchyma(values[box], liver[box], sp, p)
    best, best_z = None, p.click_min_z
    for scale in scales:
        c, valid, relative = centre_surround_contrast(values[box], ref_box.usable, sp, scale.radius_mm, p.gap_mm,
                                                      p.ring_mm)
        noise = scale.measured_sd_hu * float(np.sqrt(relative[local]))
        z = (float(c[local]) - scale.mode_hu) / noise if valid[local] else -np.inf
        if z > best_z:
            best, best_z = scale.radius_mm, z
    if best is None:
        return None
    zz, yy, xx = np.indices(liver[box].shape, sparse=True)
    dist = np.sqrt(((zz - local[0]) * sp[0]) ** 2 + ((yy - local[1]) * sp[1]) ** 2 + ((xx - local[2]) * sp[2]) ** 2)
    seed = (dist <= max(0.4 * best, 1.5 * float(sp.max()))) & ref_box.usable & ~taken[box]
    seed[local] = True
    support = dist <= 1.5 * best + p.support_margin_mm
    mask = np.zeros(liver.shape, bool)
    # the click asserts a lesion, however faint: its values may be smoothed up to half its scale
    clicked = replace(p, smooth_fraction=max(p.smooth_fraction, 0.5), smooth_max_mm=max(p.smooth_max_mm, 6.0))
    whole = tuple(slice(0, n) for n in seed.shape)
    lesion = np.zeros(seed.shape, bool)
    null_sd = _null_sd_at(scales)
    for _ in range(CLICK_ROUNDS):
        pieces = _grow_seed(whole, seed, values[box], liver[box], ref_box, taken[box], support, best, sp, clicked,
                            null_sd, split=False)  # a click's seed is a ball round it, not a significant region
        grown = np.zeros(seed.shape, bool)
        for piece in pieces:
            if piece[local] or (piece & (dist <= 0.4 * best)).any():
                grown |= piece
        grew = grown.sum() > CLICK_GROWTH * max(1, lesion.sum())
        if not grew or not (_cut_by_context(grown, seed, best, sp, p)
                            or _border_inside_lesion(grown, values[box], ref_box, sp)):
            lesion = grown if grown.sum() > lesion.sum() else lesion
            break
        # the extent is read against the parenchyma round its seed: a seed much smaller than its lesion puts that
        # ring inside the lesion, so the lesion found is the next round's seed
        lesion = grown
        seed = lesion & ref_box.usable
        support = dist <= CLICK_REACH_FACTOR * max(p.radii_mm)
    mask[box] = lesion
    return mask if mask.any() else None


# ------------------------------------------------------------------------------------- instances and measurements


def relabel_by_volume(labels_arr: np.ndarray, min_voxels: int = 1) -> np.ndarray:
    """Renumber instances 1..n by decreasing voxel count, dropping those below min_voxels (uint16)."""
    return volume_order(labels_arr, min_voxels)[labels_arr]


def volume_order(labels_arr: np.ndarray, min_voxels: int = 1) -> np.ndarray:
    """`relabel_by_volume`'s lookup table (uint16, old id -> new id by decreasing voxel count, 0 for dropped
    ids), indexed by every id up to the largest present."""
    counts = np.bincount(np.asarray(labels_arr).ravel())
    counts[0] = 0
    order = [int(i) for i in np.argsort(-counts, kind="stable") if i != 0 and counts[i] >= max(1, min_voxels)]
    lut = np.zeros(counts.size, np.uint16)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.uint16)
    return lut


def _max_diameter_mm(points_mm: np.ndarray) -> float:
    """Largest distance between two of the points (mm; 2-D or 3-D coordinates): over their convex hull's
    vertices, at most 3000 of them. Give the points of one plane in that plane's 2-D coordinates: a flat set has
    no 3-D hull, and all its points would be compared."""
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) > points_mm.shape[1]:
        try:
            from scipy.spatial import ConvexHull

            points_mm = points_mm[ConvexHull(points_mm).vertices]
        except Exception:  # collinear or degenerate sets: use all points  # noqa: BLE001
            pass
    if len(points_mm) > 3000:
        points_mm = points_mm[:: len(points_mm) // 3000 + 1]
    d2 = ((points_mm[:, None, :] - points_mm[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d2.max()))


def _axial_axis(image: sitk.Image) -> int:
    """The array axis (0 = z, 1 = y, 2 = x of [z, y, x]) whose index direction is nearest the patient's S axis."""
    d = geometry.direction_matrix(image)
    return 2 - int(np.argmax(np.abs(d[2, :])))


def measure_lesions(lesion_labels: sitk.Image, ct: sitk.Image) -> list[dict]:
    """Per lesion instance, sorted by id: id, volume_ml, centroid_ras [x, y, z] (mm), max_diameter_mm (the largest
    distance between two of its voxel centres, plus one voxel), equivalent_diameter_mm (of the ball of its
    volume), axial_diameter_mm (RECIST's longest diameter: the largest in any one slice across the patient's
    long axis, plus one voxel) and mean_hu (of the CT given)."""
    geometry.require_same_geometry(lesion_labels, ct, "The lesion label map")
    lab = sitk.GetArrayViewFromImage(lesion_labels)
    arr = sitk.GetArrayViewFromImage(ct)
    voxel_ml = geometry.voxel_volume_ml(ct)
    pixel = float(np.mean(ct.GetSpacing()))
    spacing_zyx = np.asarray(ct.GetSpacing(), float)[::-1]
    axis = _axial_axis(ct)
    rows = []
    objects = ndimage.find_objects(lab.astype(np.int64)) if lab.any() else []
    for i, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        idx = np.argwhere(comp) + np.array([s.start for s in sl])
        pts = geometry.voxel_centers_lps(ct, idx)
        # within one slice, index offsets times the spacing are distances (the direction matrix is orthonormal)
        plane_mm = (idx * spacing_zyx)[:, [a for a in range(3) if a != axis]]
        axial = max(_max_diameter_mm(plane_mm[idx[:, axis] == k]) for k in np.unique(idx[:, axis]))
        rows.append({
            "id": int(i),
            "volume_ml": float(comp.sum() * voxel_ml),
            "centroid_ras": [float(c) for c in geometry.lps_to_ras(pts.mean(0))],
            "max_diameter_mm": _max_diameter_mm(pts) + pixel,
            "equivalent_diameter_mm": 2.0 * equivalent_radius_mm(int(comp.sum()), voxel_ml * 1000.0),
            "axial_diameter_mm": axial + pixel,
            "mean_hu": float(arr[sl][comp].mean()),
        })
    return rows
