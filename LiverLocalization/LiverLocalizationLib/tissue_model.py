"""EM tissue segmentation: a 1-D Gaussian mixture of CT intensities with mean-field MRF regularisation.

`fit_gaussian_mixture` is an expectation-maximization fit written here (vectorised numpy). Large
samples are first binned into a weighted histogram (0.5 HU bins by default): EM on the weighted
histogram gives the same parameters as EM on the samples, within the binning error (a variance bias
of bin²/12 ≈ 0.02 HU²), at a cost independent of the number of voxels. The number of classes is
chosen by BIC unless given; initialisation is deterministic (quantile split refined by 1-D k-means).

`posteriors` gives per-voxel class probabilities, `mrf_regularise` smooths them with a mean-field
Potts model (each voxel's class prior is raised where its 6 neighbours agree), so noise does not
fragment classes. `segment_tissues` is the stage the pipeline calls: liver extraction (liver.py), the
mixture inside the liver and its MRF (the vessels are its hyperdense classes), then the lesions
(lesions.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import geometry
from .errors import InputError

Progress = Callable[[float, str], None]
FLUID_HU = 30.0  # fluid (cysts, bile, water) lies below this, solid tissue above
_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass
class MixtureModel:
    """A fitted 1-D Gaussian mixture of intensities (HU), classes sorted by mean.

    names: tissue meaning of each class relative to the dominant (parenchyma) class:
    'lesion-hypo' (mean below parenchyma by > 2 parenchyma sd), 'parenchyma' (within 2 sd),
    'vessel' (above by > 2 sd). log_likelihood: mean log-likelihood per sample; n_samples: the
    (weighted) sample count; bic: Bayesian information criterion of the fit.
    """

    means_hu: np.ndarray
    sds_hu: np.ndarray
    weights: np.ndarray
    names: list[str]
    log_likelihood: float
    n_iter: int
    n_samples: float = 0.0
    bic: float = float("nan")
    converged: bool = True
    bic_by_k: dict[int, float] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return int(len(self.means_hu))

    @property
    def parenchyma_index(self) -> int:
        """Index of the dominant class (largest weight), taken as liver parenchyma."""
        return int(np.argmax(self.weights))

    def log_densities(self, values: np.ndarray) -> np.ndarray:
        """log(weight_k × N(values | mean_k, sd_k)) for each class, shape (K, *values.shape), float32."""
        v = np.asarray(values, dtype=np.float32)
        out = np.empty((self.n_classes,) + v.shape, dtype=np.float32)
        for k in range(self.n_classes):
            var = float(self.sds_hu[k]) ** 2
            const = float(np.log(self.weights[k]) - 0.5 * (_LOG_2PI + np.log(var)))
            # const - (v - mean)^2 / (2 var), the same float32 operations written in place (no temporaries)
            term = np.subtract(v, np.float32(self.means_hu[k]), out=out[k])
            np.square(term, out=term)
            term /= np.float32(2.0 * var)
            np.subtract(const, term, out=term)
        return out

    def as_dicts(self) -> list[dict]:
        """One dict per class (name, mean_hu, sd_hu, weight), for reports."""
        return [{"name": n, "mean_hu": float(m), "sd_hu": float(s), "weight": float(w)}
                for n, m, s, w in zip(self.names, self.means_hu, self.sds_hu, self.weights)]


def name_classes(means: np.ndarray, sds: np.ndarray, weights: np.ndarray, separation_sd: float = 2.0) -> list[str]:
    """Name classes by their mean relative to the dominant class (parenchyma), in units of its sd."""
    p = int(np.argmax(weights))
    names = []
    for m in means:
        z = (m - means[p]) / sds[p]
        names.append("lesion-hypo" if z < -separation_sd else "vessel" if z > separation_sd else "parenchyma")
    return names


# ------------------------------------------------------------------------------------- EM

def _histogram(samples: np.ndarray, bin_width: float) -> tuple[np.ndarray, np.ndarray]:
    lo = np.floor(samples.min() / bin_width) * bin_width
    idx = np.floor((samples - lo) / bin_width).astype(np.int64)
    counts = np.bincount(idx).astype(np.float64)
    centres = lo + (np.arange(counts.size) + 0.5) * bin_width
    keep = counts > 0
    return centres[keep], counts[keep]


def _weighted_quantile_init(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Means of k equal-mass quantile groups, refined by weighted 1-D k-means (deterministic)."""
    order = np.argsort(x)
    xs, ws = x[order], w[order]
    cdf = np.cumsum(ws) / ws.sum()
    group = np.minimum((cdf * k - 1e-9).astype(int), k - 1)
    means = np.array([np.average(xs[group == g], weights=ws[group == g]) if np.any(group == g) else xs[-1]
                      for g in range(k)])
    for _ in range(50):
        assign = np.argmin(np.abs(xs[:, None] - means[None, :]), axis=1)
        new = np.array([np.average(xs[assign == g], weights=ws[assign == g]) if np.any(assign == g) else means[g]
                        for g in range(k)])
        if np.allclose(new, means, atol=1e-6):
            break
        means = new
    return np.sort(means)


def _em(x: np.ndarray, w: np.ndarray, means: np.ndarray, sds: np.ndarray, weights: np.ndarray,
        max_iter: int, tol: float, var_floor: float, frozen: np.ndarray | None = None):
    """Weighted EM on points x with weights w; returns (means, sds, weights, mean log-lik, n_iter, converged).

    Components flagged in `frozen` keep their mean and sd (only their weight is re-estimated).
    """
    total = w.sum()
    fixed_means, fixed_sds = means.copy(), sds.copy()
    prev = -np.inf
    ll = -np.inf
    converged = False
    n_iter = 0
    for iteration in range(1, max_iter + 1):
        n_iter = iteration
        var = sds ** 2
        logp = (np.log(weights)[:, None] - 0.5 * (_LOG_2PI + np.log(var))[:, None]
                - (x[None, :] - means[:, None]) ** 2 / (2.0 * var[:, None]))
        mx = logp.max(axis=0)
        lse = mx + np.log(np.exp(logp - mx).sum(axis=0))
        ll = float(np.dot(w, lse) / total)
        resp = np.exp(logp - lse) * w[None, :]
        nk = resp.sum(axis=1) + 1e-12
        means = resp @ x / nk
        var = (resp * (x[None, :] - means[:, None]) ** 2).sum(axis=1) / nk + var_floor
        sds = np.sqrt(var)
        if frozen is not None:
            means = np.where(frozen, fixed_means, means)
            sds = np.where(frozen, fixed_sds, sds)
        weights = nk / total
        if abs(ll - prev) < tol:
            converged = True
            break
        prev = ll
    return means, sds, weights, ll, n_iter, converged


def _fit_k(x, w, k, init, max_iter, tol, var_floor):
    if init == "quantile":
        means = _weighted_quantile_init(x, w, k)
    elif isinstance(init, (list, tuple, np.ndarray)):
        means = np.sort(np.asarray(init, dtype=float))
        if means.size != k:
            raise InputError(f"init has {means.size} means but {k} classes were asked for.")
    else:
        raise InputError(f"Unknown init {init!r}: use 'quantile' or a sequence of initial means in HU.")
    # initial sds: half the distance to the nearest other mean, bounded by the data's sd
    spread = float(np.sqrt(np.average((x - np.average(x, weights=w)) ** 2, weights=w)))
    if k > 1:
        gaps = np.diff(means)
        near = np.minimum(np.r_[np.inf, gaps], np.r_[gaps, np.inf])
        sds = np.clip(near / 2.0, 1.0, spread)
    else:
        sds = np.array([max(spread, 1.0)])
    weights = np.full(k, 1.0 / k)
    return _em(x, w, means.astype(float), sds.astype(float), weights, max_iter, tol, var_floor)


def fit_gaussian_mixture(samples_hu: np.ndarray, n_classes: int | None = None, *, max_iter: int = 500,
                         tol: float = 1e-6, init="quantile", weights: np.ndarray | None = None,
                         bin_width: float | None = None, k_range: tuple[int, int] = (2, 5),
                         var_floor: float = 1e-6) -> MixtureModel:
    """Fit a 1-D Gaussian mixture to intensities (HU) by expectation-maximization.

    Args:
        samples_hu: intensities, any shape (flattened).
        n_classes: number of classes K; None chooses K in `k_range` by the lowest BIC.
        max_iter, tol: stop after max_iter iterations or when the mean log-likelihood per sample
            changes by less than tol.
        init: 'quantile' (equal-mass quantile groups refined by 1-D k-means; deterministic) or a
            sequence of K initial means in HU.
        weights: optional non-negative weight per sample (e.g. histogram counts).
        bin_width: bin samples into a weighted histogram of this width (HU) first; None bins only
            when there are more than 200 000 samples (0.5 HU bins). 0 never bins.
        var_floor: added to every variance (HU²), as sklearn's reg_covar.
    Returns a MixtureModel with classes sorted by mean.
    """
    x = np.asarray(samples_hu, dtype=np.float64).ravel()
    if weights is None:
        w = np.ones_like(x)
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape != x.shape or np.any(w < 0):
            raise InputError("weights must be non-negative, one per sample.")
        x, w = x[w > 0], w[w > 0]
    if not np.all(np.isfinite(x)):
        raise InputError("The intensities to model contain NaN or infinite values.")
    if x.size < 10:
        raise InputError(f"Only {x.size} samples: too few to fit a tissue model (is the liver mask nearly empty?).")
    if np.ptp(x) < 1e-6:
        raise InputError("The intensities to model are constant; no tissue classes can be separated.")
    if bin_width is None:
        bin_width = 0.5 if (weights is None and x.size > 200_000) else 0.0
    if bin_width > 0:
        if weights is None:
            x, w = _histogram(x, bin_width)
        else:
            idx_x, idx_w = _histogram_weighted(x, w, bin_width)
            x, w = idx_x, idx_w
    n_total = float(w.sum())
    candidates = [int(n_classes)] if n_classes is not None else list(range(k_range[0], k_range[1] + 1))
    if n_classes is not None and not 1 <= n_classes <= 10:
        raise InputError(f"{n_classes} classes: use 1-10, or None to choose by BIC.")
    best = None
    bic_by_k: dict[int, float] = {}
    for k in candidates:
        means, sds, wts, ll, n_iter, conv = _fit_k(x, w, k, init if n_classes is not None or init == "quantile" else "quantile",
                                                   max_iter, tol, var_floor)
        n_params = 3 * k - 1
        bic = -2.0 * ll * n_total + n_params * np.log(n_total)
        bic_by_k[k] = float(bic)
        if best is None or bic < best[0]:
            best = (bic, means, sds, wts, ll, n_iter, conv)
    bic, means, sds, wts, ll, n_iter, conv = best
    order = np.argsort(means)
    means, sds, wts = means[order], sds[order], wts[order]
    return MixtureModel(means_hu=means, sds_hu=sds, weights=wts, names=name_classes(means, sds, wts),
                        log_likelihood=float(ll), n_iter=int(n_iter), n_samples=n_total, bic=float(bic),
                        converged=bool(conv), bic_by_k=bic_by_k)


def fit_anchored_mixture(samples_hu: np.ndarray, anchor_mean_hu: float, anchor_sd_hu: float, *,
                         k_range: tuple[int, int] = (1, 5), max_iter: int = 500, tol: float = 1e-6,
                         bin_width: float = 1.0) -> tuple[MixtureModel, int]:
    """Mixture with one component pinned at (anchor_mean_hu, anchor_sd_hu) plus K free components (K by BIC).

    Used to find one known tissue (liver parenchyma, whose intensity is measured near the seeds) among
    everything else in a region: the free components absorb fat, muscle, blood pool and bone, and cannot
    swallow the anchored class by growing broad. Returns the model (classes sorted by mean) and the index
    of the anchored class in it.
    """
    x, w = _histogram(np.asarray(samples_hu, dtype=np.float64).ravel(), bin_width)
    if w.sum() < 10:
        raise InputError("Too few voxels to model the tissue around the liver.")
    n_total = float(w.sum())
    best = None
    bic_by_k: dict[int, float] = {}
    for k in range(k_range[0], k_range[1] + 1):
        free = _weighted_quantile_init(x, w, k)
        means = np.r_[anchor_mean_hu, free]
        spread = float(np.sqrt(np.average((x - np.average(x, weights=w)) ** 2, weights=w)))
        sds = np.r_[anchor_sd_hu, np.full(k, max(spread / (k + 1), 1.0))]
        frozen = np.r_[True, np.zeros(k, bool)]
        res = _em(x, w, means, sds, np.full(k + 1, 1.0 / (k + 1)), max_iter, tol, 1e-6, frozen)
        bic = -2.0 * res[3] * n_total + (3 * k + 1) * np.log(n_total)
        bic_by_k[k] = float(bic)
        if best is None or bic < best[0]:
            best = (bic, *res)
    bic, means, sds, wts, ll, n_iter, conv = best
    order = np.argsort(means, kind="stable")
    anchor = int(np.flatnonzero(order == 0)[0])
    means, sds, wts = means[order], sds[order], wts[order]
    names = ["other"] * len(means)
    names[anchor] = "parenchyma"
    return MixtureModel(means_hu=means, sds_hu=sds, weights=wts, names=names, log_likelihood=float(ll),
                        n_iter=int(n_iter), n_samples=n_total, bic=float(bic), converged=bool(conv),
                        bic_by_k=bic_by_k), anchor


def _histogram_weighted(x: np.ndarray, w: np.ndarray, bin_width: float) -> tuple[np.ndarray, np.ndarray]:
    lo = np.floor(x.min() / bin_width) * bin_width
    idx = np.floor((x - lo) / bin_width).astype(np.int64)
    counts = np.bincount(idx, weights=w)
    centres = lo + (np.arange(counts.size) + 0.5) * bin_width
    keep = counts > 0
    return centres[keep], counts[keep]


# ------------------------------------------------------------------------------------- posteriors and MRF

def posteriors(image_hu_array: np.ndarray, model: MixtureModel, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-voxel class posteriors P(class k | intensity), shape (K, *array.shape), float32; 0 outside mask."""
    logp = model.log_densities(image_hu_array)
    logp -= logp.max(axis=0, keepdims=True)
    np.exp(logp, out=logp)
    logp /= logp.sum(axis=0, keepdims=True)
    if mask is not None:
        logp *= np.asarray(mask, dtype=bool)[None]
    return logp


def _neighbour_sum(q: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Sum over the 6 face neighbours of each voxel of a (z, y, x) array (zero beyond the border)."""
    out[0] = 0  # then out[1:] = 0 + q[:-1], which is q[:-1] exactly: one pass fewer
    out[1:] = q[:-1]
    out[:-1] += q[1:]
    out[:, 1:] += q[:, :-1]
    out[:, :-1] += q[:, 1:]
    out[:, :, 1:] += q[:, :, :-1]
    out[:, :, :-1] += q[:, :, 1:]
    return out


def _sum_by_name(post: np.ndarray, class_names: list[str], names: list[str]) -> np.ndarray:
    """Posteriors (K, ...) summed over the classes of each name in `names` (len(names), ...), in class order and in
    place (the same sums as indexing each name's classes out and summing them, without the copies)."""
    out = np.empty((len(names),) + post.shape[1:], dtype=post.dtype)
    started = [False] * len(names)
    for k, name in enumerate(class_names):
        g = names.index(name)
        if started[g]:
            out[g] += post[k]
        else:
            out[g] = post[k]
            started[g] = True
    return out


def mrf_regularise(posteriors: np.ndarray, beta: float = 1.0, iterations: int = 5,
                   mask: np.ndarray | None = None) -> np.ndarray:
    """Mean-field Potts regularisation of class posteriors (K, z, y, x).

    Each iteration sets q_k ∝ P_k × exp(beta × Σ_{6 neighbours} q_k(n)), where P are the data posteriors
    (prior × likelihood, from `posteriors`). beta = 0 returns the input; beta ≈ 1 removes isolated noisy
    voxels while keeping structures a few voxels wide. Voxels outside `mask` keep q = 0 and do not vote.
    Returns float32 posteriors of the same shape.
    """
    p = np.asarray(posteriors, dtype=np.float32)
    if p.ndim != 4:
        raise InputError("mrf_regularise expects posteriors of shape (K, z, y, x).")
    if beta == 0 or iterations <= 0:
        return p.copy()
    inside = np.ones(p.shape[1:], bool) if mask is None else np.asarray(mask, dtype=bool)
    log_data = np.log(np.maximum(p, 1e-12))
    q = p.copy()
    new = np.empty_like(q)  # the sweeps alternate between two buffers (the same float32 operations, in place)
    field_k = np.empty(p.shape[1:], dtype=np.float32)
    for _ in range(int(iterations)):
        for k in range(p.shape[0]):
            _neighbour_sum(q[k], field_k)
            field_k *= np.float32(beta)
            np.add(log_data[k], field_k, out=new[k])
        new -= new.max(axis=0, keepdims=True)
        np.exp(new, out=new)
        new /= new.sum(axis=0, keepdims=True)
        new *= inside[None]
        q, new = new, q
    return q


# ------------------------------------------------------------------------------------- the stage


def parenchyma_statistics(values: np.ndarray) -> tuple[float, float]:
    """Robust parenchyma mean and sd (HU) of liver voxel values: median and 1.4826 × MAD (floor 1 HU)."""
    v = np.asarray(values, dtype=np.float64)
    med = float(np.median(v))
    return med, max(1.0, 1.4826 * float(np.median(np.abs(v - med))))


def peak_statistics(values: np.ndarray, bin_fraction: float = 0.1) -> tuple[float, float]:
    """Mode and sd of the main peak of a sample: the peak of its histogram (bins of `bin_fraction` of the robust
    sd, smoothed over two bins) and its half width at half maximum on the narrower side, divided by 1.1774 (a
    Gaussian's HWHM in sds). Robust to a heavy tail on either side (tumours below the parenchyma, vessels above).
    Returns (mode, sd), the sd at least 1e-3."""
    v = np.asarray(values, np.float64).ravel()
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med))) + 1e-6
    width = bin_fraction * mad
    edges = np.arange(med - 6.0 * mad, med + 6.0 * mad + width, width)
    hist = ndimage.gaussian_filter1d(np.histogram(v, bins=edges)[0].astype(float), 2.0)
    k = int(np.argmax(hist))
    right = k
    while right < len(hist) - 1 and hist[right] > 0.5 * hist[k]:
        right += 1
    left = k
    while left > 0 and hist[left] > 0.5 * hist[k]:
        left -= 1
    half_width = min(right - k, k - left) * width
    return float(0.5 * (edges[k] + edges[k + 1])), float(max(half_width / 1.1774, 1e-3))


def liver_mixture(values: np.ndarray, n_classes: int | None = None, separation_sd: float = 1.5):
    """EM mixture of liver intensities (HU) with one class anchored at the parenchyma (median and 1.4826 × MAD of
    the liver's voxels, robust to vessels and tumours) and free classes for everything else (K by BIC).

    n_classes: total number of classes (anchor included); None chooses the free classes by BIC.
    Classes are named by their mean relative to the parenchyma (mu ± separation_sd · sd): 'parenchyma' within,
    'hypodense' below, 'vessel' above; a class broader than separation_sd · sd is 'mixed' (its voxels are then
    judged one by one against the same bounds). Returns (model, anchor index).
    """
    mu, sd = parenchyma_statistics(values)
    k_range = (1, 5) if n_classes is None else (max(1, n_classes - 1), max(1, n_classes - 1))
    model, anchor = fit_anchored_mixture(np.clip(values, -200, 500), mu, sd, k_range=k_range)
    names = []
    for k, (m, s) in enumerate(zip(model.means_hu, model.sds_hu)):
        if k == anchor:
            names.append("parenchyma")
        elif s > separation_sd * sd:
            names.append("mixed")
        elif m < mu - separation_sd * sd:
            names.append("hypodense")
        elif m > mu + separation_sd * sd:
            names.append("vessel")
        else:
            names.append("parenchyma")
    return MixtureModel(means_hu=model.means_hu, sds_hu=model.sds_hu, weights=model.weights.copy(), names=names,
                        log_likelihood=model.log_likelihood, n_iter=model.n_iter, n_samples=model.n_samples,
                        bic=model.bic, converged=model.converged, bic_by_k=model.bic_by_k), anchor


def hyperdense_voxels(arr: np.ndarray, classes: np.ndarray, liver: np.ndarray, model: MixtureModel,
                      separation_sd: float = 1.5) -> np.ndarray:
    """The liver's voxels of the mixture's 'vessel' classes, and those of 'mixed' classes brighter than the
    parenchyma by `separation_sd` of its robust sd: the vessels (bool, arr's shape)."""
    names = np.array(model.names)
    mu, sd = parenchyma_statistics(arr[liver])
    mixed = (names == "mixed")[classes]
    return liver & ((names == "vessel")[classes] | (mixed & (arr > mu + separation_sd * sd)))


@dataclass
class TissueResult:
    """Output of segment_tissues; every image has exactly the CT's geometry.

    liver_mask: uint8 0/1; tissue: uint8 (0 background, 1 parenchyma, 2 lesion, 3 vessel);
    lesion_labels: uint16 instances 1..n ordered by volume (largest first), each lesion's full extent;
    vessel_mask: uint8 0/1; model: the intensity mixture fitted inside the liver; lesion_rows: per lesion its id,
    source ('detected' or 'clicked') and, for detected ones, its evidence (`lesions.LesionDetection`);
    lesion_scales: the lesion model's null statistics per scale; warnings: what the user should know (a clicked
    point where no lesion was found); timings: seconds per sub-stage.
    """

    liver_mask: sitk.Image
    tissue: sitk.Image
    lesion_labels: sitk.Image
    vessel_mask: sitk.Image
    model: MixtureModel
    lesion_rows: list[dict] = field(default_factory=list)
    lesion_scales: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


PORTAL_PHASE_MIN_HU = 75.0  # parenchyma below this: not the portal-venous phase the rules were set for


def contrast_phase_warnings(model: MixtureModel) -> list[str]:
    """Warnings when the liver does not look like portal-venous CT, the phase the vessel classes are named for.

    The parenchyma (weighted mean of the mixture's 'parenchyma' classes) is at 90-140 HU in the portal-venous
    phase (3D-IRCADb 1.1: 111 HU; domain notes: 100-110 +- 22) and at 45-65 HU without contrast. Below
    `PORTAL_PHASE_MIN_HU` the run goes on and says so. Returns a list of messages (empty when the phase looks
    right).
    """
    names = np.asarray(model.names)
    par = names == "parenchyma"
    if not par.any():
        return []
    mean = float(np.sum(model.means_hu[par] * model.weights[par]) / np.sum(model.weights[par]))
    if mean >= PORTAL_PHASE_MIN_HU:
        return []
    return [f"The liver parenchyma is at {mean:.0f} HU: this looks like a CT without contrast or in the arterial "
            f"phase (portal-venous phase: about 90-140 HU). Lesions and vessels are less distinct there; use the "
            f"portal-venous series if there is one."]


def segment_tissues(denoised_ct: sitk.Image, landmarks: dict[str, np.ndarray] | None = None,
                    liver_mask: sitk.Image | None = None, *, n_classes: int | None = None,
                    lesion_parameters=None, lesion_points: dict[str, np.ndarray] | None = None,
                    liver_extracted: bool | None = None, mrf_beta: float = 1.0, mrf_iterations: int = 5,
                    progress: Progress | None = None) -> TissueResult:
    """Liver, lesions and vessels of a (denoised) CT in HU.

    Args:
        denoised_ct: CT in HU (any spacing and direction), preferably denoised.
        landmarks: label → point in LPS mm (they lie in or on the liver): seeds of the liver extraction.
        liver_mask: optional liver mask on the CT's grid (nonzero = liver); replaces the extraction.
        n_classes: mixture classes inside the liver; None chooses by BIC.
        lesion_parameters: `lesions.LesionParameters` (None: the defaults).
        lesion_points: name → LPS point (mm) the user marked inside a lesion the detection may have missed; a
            point inside a detected lesion leaves it as it is (`lesions.lesion_at_point`).
        liver_extracted: the liver mask was extracted from the CT, not drawn by a user (default: when none is
            given): lesions cut by its border are then continued beyond it, and the liver with them
            (`lesions.extend_beyond_liver`); a user's mask is kept as it is.
        mrf_beta, mrf_iterations: mean-field MRF strength and number of sweeps of the tissue classes.
        progress: callback (fraction 0..1, message).
    Without landmarks and mask, the liver is the largest parenchyma-like component in the right upper
    abdomen (see liver.extract_liver). Bad input raises InputError before any result is made.
    """
    from . import io, lesions, liver

    def report(f: float, msg: str) -> None:
        if progress is not None:
            progress(f, msg)

    timings: dict[str, float] = {}
    params = lesion_parameters or lesions.LesionParameters()
    params.validate()
    ct = io.validate_ct(denoised_ct, "The denoised CT")
    if landmarks:
        liver.check_landmarks_inside(ct, landmarks)
    if liver_mask is not None:
        geometry.require_same_geometry(liver_mask, ct, "The liver mask")
        if not sitk.GetArrayViewFromImage(liver_mask).any():
            raise InputError("The liver mask is empty; give a mask with the liver set to nonzero, or run without it.")

    t0 = time.perf_counter()
    report(0.0, "liver extraction")
    if liver_mask is not None:
        mask_img = sitk.Cast(sitk.NotEqual(liver_mask, 0), sitk.sitkUInt8)
        mask_img.CopyInformation(ct)
    else:
        mask_img = liver.extract_liver(ct, landmarks, progress=lambda f, m: report(0.4 * f, m))
    timings["liver_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report(0.4, "EM tissue model")
    box = liver.mask_bounding_box(mask_img, margin_voxels=2)
    ct_crop = sitk.RegionOfInterest(ct, box[1], box[0])
    mask_crop = sitk.GetArrayFromImage(sitk.RegionOfInterest(mask_img, box[1], box[0])) > 0
    arr = sitk.GetArrayViewFromImage(ct_crop)
    model, _ = liver_mixture(arr[mask_crop], n_classes)
    names = list(dict.fromkeys(model.names))
    first = np.array([model.names.index(n) for n in names], dtype=np.uint8)
    post = posteriors(arr, model, mask_crop)
    if len(names) < model.n_classes:  # same-named classes are one label for the MRF
        post = _sum_by_name(post, model.names, names)
    post = mrf_regularise(post, beta=mrf_beta, iterations=mrf_iterations, mask=mask_crop)
    classes = first[np.argmax(post, axis=0)]
    del post
    hyper = hyperdense_voxels(arr, classes, mask_crop, model)
    timings["em_mrf_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report(0.55, "lesions")
    spacing_zyx = np.asarray(ct_crop.GetSpacing())[::-1]
    found = lesions.detect_lesions(arr, mask_crop, spacing_zyx, params,
                                   progress=lambda f, m: report(0.55 + 0.4 * f, m))
    lesion_crop = found.labels.astype(np.int32)
    rows = [{**row, "source": "detected"} for row in found.evidence]
    warnings: list[str] = []
    for name, point in (lesion_points or {}).items():
        index = np.asarray(ct_crop.TransformPhysicalPointToContinuousIndex([float(c) for c in point]))[::-1]
        inside = np.all(np.round(index) >= 0) and np.all(np.round(index) < np.asarray(arr.shape))
        label = int(lesion_crop[tuple(np.round(index).astype(int))]) if inside else 0
        if label:
            continue  # a detected lesion: kept as it is
        mask = lesions.lesion_at_point(arr, mask_crop, spacing_zyx, index, params, taken=lesion_crop > 0,
                                       scales=found.scales) if inside else None
        if mask is None:
            warnings.append(f"No lesion found at the clicked point {name!r} (LPS {np.round(point, 1).tolist()} mm): "
                            "it lies outside the liver or is not darker than the liver round it.")
            continue
        new_id = int(lesion_crop.max()) + 1
        lesion_crop[mask & (lesion_crop == 0)] = new_id
        rows.append({"id": new_id, "source": "clicked", "point": name})
    lesion_crop, rows = _renumber_by_volume(lesion_crop, rows)
    timings["lesions_s"] = time.perf_counter() - t0

    tissue = np.zeros(mask_crop.shape, np.uint8)
    tissue[mask_crop] = 1
    tissue[hyper] = 3
    tissue[(lesion_crop > 0) & mask_crop] = 2
    vessel_crop = hyper & (lesion_crop == 0)

    def paste(crop_arr: np.ndarray, pixel_id) -> sitk.Image:
        full = sitk.Image(ct.GetSize(), pixel_id)
        full.CopyInformation(ct)
        piece = sitk.GetImageFromArray(crop_arr)
        piece.CopyInformation(ct_crop)
        return sitk.Paste(full, sitk.Cast(piece, pixel_id), box[1], (0, 0, 0), box[0])

    tissue_img, lesion_img = paste(tissue, sitk.sitkUInt8), paste(lesion_crop.astype(np.uint16), sitk.sitkUInt16)
    extracted = liver_mask is None if liver_extracted is None else liver_extracted
    if extracted and lesion_crop.any():  # an extracted liver keeps the tumours at its surface whole
        t0 = time.perf_counter()
        liver_arr = sitk.GetArrayViewFromImage(mask_img) > 0
        grown = lesions.extend_beyond_liver(sitk.GetArrayViewFromImage(ct), liver_arr,
                                            sitk.GetArrayViewFromImage(lesion_img), spacing_zyx)
        near = geometry.bounding_box(grown > 0)  # what was added lies in the box round the lesions
        added = (grown[near] > 0) & ~liver_arr[near]
        if added.any():
            tissue_arr = sitk.GetArrayFromImage(tissue_img)
            tissue_arr[near][added] = 2
            liver_arr = liver_arr.astype(np.uint8)
            liver_arr[near] |= added
            # what the continued lesions enclose is the liver's too (the liver was hole-filled before they joined)
            inner = geometry.bounding_box(added)
            around = geometry.widen(tuple(slice(n.start + a.start, n.start + a.stop) for n, a in zip(near, inner)), 2,
                                    liver_arr.shape)
            enclosed = geometry.fill_holes(liver_arr[around] > 0) & (liver_arr[around] == 0)
            liver_arr[around][enclosed] = 1
            tissue_arr[around][enclosed] = 1
            mask_img = geometry.copy_geometry(liver_arr, ct)
            tissue_img = geometry.copy_geometry(tissue_arr, ct)
            grown, rows = _renumber_by_volume(grown, rows)  # a continued lesion may now outgrow a larger one
            lesion_img = geometry.copy_geometry(grown.astype(np.uint16, copy=False), ct)
        timings["lesions_beyond_liver_s"] = time.perf_counter() - t0

    result = TissueResult(
        liver_mask=mask_img, tissue=tissue_img, lesion_labels=lesion_img,
        vessel_mask=paste(vessel_crop.astype(np.uint8), sitk.sitkUInt8), model=model, lesion_rows=rows,
        lesion_scales=found.scales, warnings=warnings, timings=timings)
    report(1.0, "tissues done")
    return result


def _renumber_by_volume(labels_arr: np.ndarray, rows: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Instances renumbered 1..n by decreasing volume (`lesions.volume_order`), in the input's integer type, with
    their rows' ids to match (rows of empty ids dropped)."""
    from .lesions import volume_order

    out = np.zeros(labels_arr.shape, labels_arr.dtype)
    box = geometry.bounding_box(labels_arr != 0)  # counted and renumbered on the box round the instances (zeros stay 0)
    if box is None:
        return out, []  # no instance: every row's id is empty
    lut = volume_order(labels_arr[box])
    out[box] = lut[labels_arr[box]]
    renumbered = [{**row, "id": int(lut[row["id"]])} for row in rows if row["id"] < lut.size and lut[row["id"]] > 0]
    return out, sorted(renumbered, key=lambda r: r["id"])
