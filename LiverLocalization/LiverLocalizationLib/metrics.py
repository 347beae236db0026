"""Evaluation metrics: segmentation overlap and distances in mm, classification with confidence intervals.

Segmentation metrics take boolean/label arrays or SimpleITK images; distances use the voxel spacing
(mm). Classification metrics take integer labels / scores as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage


def _as_bool_array(mask) -> np.ndarray:
    if isinstance(mask, sitk.Image):
        return sitk.GetArrayViewFromImage(mask).astype(bool)
    return np.asarray(mask).astype(bool)


def _spacing_zyx(image_or_spacing) -> np.ndarray:
    if isinstance(image_or_spacing, sitk.Image):
        return np.asarray(image_or_spacing.GetSpacing(), dtype=float)[::-1]
    return np.asarray(image_or_spacing, dtype=float)


def dice(a, b) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two masks; 1.0 when both are empty."""
    a, b = _as_bool_array(a), _as_bool_array(b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(a, b) -> float:
    """Intersection over union (Jaccard) of two masks; 1.0 when both are empty."""
    a, b = _as_bool_array(a), _as_bool_array(b)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def volume_ml(mask, spacing_xyz_mm: Sequence[float] | None = None) -> float:
    """Volume of a mask in millilitres (spacing from the image, or given as (x, y, z) mm)."""
    if spacing_xyz_mm is None:
        if not isinstance(mask, sitk.Image):
            raise ValueError("give spacing_xyz_mm for a numpy mask")
        spacing_xyz_mm = mask.GetSpacing()
    return float(_as_bool_array(mask).sum()) * float(np.prod(spacing_xyz_mm)) / 1000.0


def volume_difference(a, b, spacing_xyz_mm: Sequence[float] | None = None) -> dict[str, float]:
    """Volume of a (test) minus volume of b (reference): {'ml': …, 'percent': … of b}."""
    va = volume_ml(a, spacing_xyz_mm)
    vb = volume_ml(b, spacing_xyz_mm)
    return {"ml": va - vb, "percent": float("nan") if vb == 0 else 100.0 * (va - vb) / vb}


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def surface_distances(a, b, spacing_zyx_mm) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of a to b's surface, and from b's to a's."""
    a, b = _as_bool_array(a), _as_bool_array(b)
    sa, sb = _surface(a), _surface(b)
    dt_b = ndimage.distance_transform_edt(~sb, sampling=spacing_zyx_mm)
    dt_a = ndimage.distance_transform_edt(~sa, sampling=spacing_zyx_mm)
    return dt_b[sa], dt_a[sb]


def hausdorff95(a, b, spacing=None) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (spacing: image, or (z, y, x) mm).

    inf when exactly one mask is empty, 0 when both are.
    """
    if spacing is None:
        spacing = a if isinstance(a, sitk.Image) else np.ones(3)
    a_arr, b_arr = _as_bool_array(a), _as_bool_array(b)
    if not a_arr.any() and not b_arr.any():
        return 0.0
    if not a_arr.any() or not b_arr.any():
        return float("inf")
    # work inside the joint bounding box (+1 voxel) for speed
    both = a_arr | b_arr
    idx = np.argwhere(both)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = idx.max(0) + 2
    crop = tuple(slice(l, h) for l, h in zip(lo, hi))
    d_ab, d_ba = surface_distances(a_arr[crop], b_arr[crop], _spacing_zyx(spacing))
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


def per_class_table(test_labels, truth_labels, classes: dict[int, str], spacing=None) -> list[dict]:
    """Per-class Dice, IoU, HD95 (mm) and volumes (ml) of two label maps; one row per class."""
    if spacing is None:
        spacing = truth_labels if isinstance(truth_labels, sitk.Image) else np.ones(3)
    sp_zyx = _spacing_zyx(spacing)
    voxel_ml = float(np.prod(sp_zyx)) / 1000.0
    t = (sitk.GetArrayViewFromImage(test_labels) if isinstance(test_labels, sitk.Image) else np.asarray(test_labels))
    r = (sitk.GetArrayViewFromImage(truth_labels) if isinstance(truth_labels, sitk.Image) else np.asarray(truth_labels))
    rows = []
    for value, name in classes.items():
        a, b = t == value, r == value
        rows.append({
            "label": int(value), "name": name, "dice": dice(a, b), "iou": iou(a, b),
            "hd95_mm": hausdorff95(a, b, sp_zyx),
            "volume_ml": float(a.sum()) * voxel_ml, "truth_volume_ml": float(b.sum()) * voxel_ml,
        })
    return rows


# ---------------------------------------------------------------- classification

def confusion_matrix(y_true, y_pred, n_classes: int | None = None) -> np.ndarray:
    """Counts C[i, j] of samples with true class i predicted as j."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if n_classes is None:
        n_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def binary_report(y_true, y_pred) -> dict[str, float]:
    """Accuracy, sensitivity (recall), specificity, precision and F1 of a binary decision (1 = positive)."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    tp = int(np.sum(y_true & y_pred))
    tn = int(np.sum(~y_true & ~y_pred))
    fp = int(np.sum(~y_true & y_pred))
    fn = int(np.sum(y_true & ~y_pred))
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn), "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp), "precision": precision, "f1": f1,
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


def classification_report(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """Overall accuracy, and per class (one-vs-rest) sensitivity, specificity, precision, F1."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    per_class = {name: binary_report(y_true == k, y_pred == k) for k, name in enumerate(class_names)}
    return {
        "accuracy": _ratio(int(np.sum(y_true == y_pred)), len(y_true)),
        "macro_f1": float(np.nanmean([r["f1"] for r in per_class.values()])) if per_class else float("nan"),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, len(class_names)).tolist(),
    }


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve (probability a random positive scores above a random negative; ties count ½)."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=float)
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return ranks


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds (descending) of a score."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=float)
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    tpr = np.array([np.mean(scores[y_true] >= t) if y_true.any() else np.nan for t in thresholds])
    fpr = np.array([np.mean(scores[~y_true] >= t) if (~y_true).any() else np.nan for t in thresholds])
    return fpr, tpr, thresholds


def expected_calibration_error(y_true, probabilities, n_bins: int = 10) -> float:
    """ECE of binary probabilities: Σ_bins (n_bin/N)·|accuracy(bin) − confidence(bin)| with equal-width bins."""
    y_true = np.asarray(y_true).astype(float)
    p = np.asarray(probabilities, dtype=float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(y_true[in_bin].mean() - p[in_bin].mean())
    return float(ece)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    groups: Sequence,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap CI of `statistic(indices)`, resampling whole groups.

    `groups[i]` is the group (e.g. the case / patient) of sample i; the bootstrap draws groups with
    replacement so that samples from one case stay together (no leakage into the interval).
    `statistic` receives an index array into the samples. NaN resamples (e.g. one class only) are skipped.
    """
    groups = np.asarray(groups)
    unique = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in unique]
    estimate = float(statistic(np.arange(len(groups))))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(unique), len(unique))
        idx = np.concatenate([members[k] for k in pick])
        v = statistic(idx)
        if np.isfinite(v):
            values.append(v)
    if not values:
        return estimate, float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    return estimate, float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


# ---------------------------------------------------------------- instance (lesion) detection

def match_instances(test_labels, truth_labels, min_iou: float = 0.1) -> dict:
    """Match detected instances to true instances by overlap (one-to-one, greedy on IoU).

    Returns {"pairs": [(test_id, truth_id, iou)], "missed": [truth ids], "false_positives": [test ids]}.
    A pair needs IoU ≥ min_iou; unmatched truths are misses, unmatched detections false positives.
    """
    t = sitk.GetArrayViewFromImage(test_labels) if isinstance(test_labels, sitk.Image) else np.asarray(test_labels)
    r = sitk.GetArrayViewFromImage(truth_labels) if isinstance(truth_labels, sitk.Image) else np.asarray(truth_labels)
    t = np.asarray(t, dtype=np.int64)
    r = np.asarray(r, dtype=np.int64)
    test_ids = [int(v) for v in np.unique(t) if v]
    truth_ids = [int(v) for v in np.unique(r) if v]
    both = (t > 0) & (r > 0)
    pair_codes, inter = np.unique(t[both] * (int(r.max()) + 1) + r[both], return_counts=True)
    test_sizes = dict(zip(*np.unique(t[t > 0], return_counts=True)))
    truth_sizes = dict(zip(*np.unique(r[r > 0], return_counts=True)))
    candidates = []
    for code, n in zip(pair_codes, inter):
        a, b = divmod(int(code), int(r.max()) + 1)
        union = test_sizes[a] + truth_sizes[b] - n
        candidates.append((n / union, a, b))
    pairs, used_test, used_truth = [], set(), set()
    for score, a, b in sorted(candidates, reverse=True):
        if score < min_iou or a in used_test or b in used_truth:
            continue
        pairs.append((a, b, float(score)))
        used_test.add(a)
        used_truth.add(b)
    return {
        "pairs": pairs,
        "missed": [b for b in truth_ids if b not in used_truth],
        "false_positives": [a for a in test_ids if a not in used_test],
    }


FOUND_COVER = 0.5   # a true lesion is found when detected lesions cover at least this share of its voxels
FALSE_OVERLAP = 0.1  # a detected lesion with less than this share of its voxels in true lesions is a false positive


def lesion_detection(test_labels, truth_labels, truth_ids=None, found_cover: float = FOUND_COVER,
                     false_overlap: float = FALSE_OVERLAP) -> dict:
    """Detection figures that do not depend on how touching lesions are split into instances.

    A true lesion (of `truth_ids`, default all) is found when detected lesions, of any instance, cover at least
    `found_cover` of its voxels; a detected instance is a false positive when less than `false_overlap` of its
    voxels lie in true lesions of any size. Returns {"found": [truth ids], "missed": [truth ids], "cover":
    {truth id: covered share}, "false_positives": [test ids]}.
    """
    t = sitk.GetArrayViewFromImage(test_labels) if isinstance(test_labels, sitk.Image) else np.asarray(test_labels)
    r = sitk.GetArrayViewFromImage(truth_labels) if isinstance(truth_labels, sitk.Image) else np.asarray(truth_labels)
    t = np.asarray(t, dtype=np.int64)
    r = np.asarray(r, dtype=np.int64)
    ids = [int(v) for v in np.unique(r) if v] if truth_ids is None else [int(v) for v in truth_ids]
    detected = t > 0
    truth_counts = np.bincount(r.ravel(), minlength=max(ids, default=0) + 1)
    covered = np.bincount(r[detected].ravel(), minlength=truth_counts.size)
    cover = {i: float(covered[i] / truth_counts[i]) if truth_counts[i] else 0.0 for i in ids}
    test_counts = np.bincount(t.ravel())
    on_truth = np.bincount(t[r > 0].ravel(), minlength=test_counts.size)
    false = [int(j) for j in range(1, test_counts.size) if test_counts[j] and on_truth[j] < false_overlap * test_counts[j]]
    return {"found": [i for i in ids if cover[i] >= found_cover], "missed": [i for i in ids if cover[i] < found_cover],
            "cover": cover, "false_positives": false}
