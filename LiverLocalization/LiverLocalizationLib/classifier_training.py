"""Training and evaluation of the lesion classifier on phantom cases, split by case (phantom seed).

Data: each phantom case (one seed) is generated, its lesions are detected the way the pipeline
detects them (median denoising, then `tissue_model.segment_tissues`), detections are matched to the
true lesions by overlap (`metrics.match_instances`) and each matched detection gives one patch
(`classifier.extract_patch` on the original CT with the *detected* mask) labelled with the true kind.
So training sees what inference sees. True lesions the detector missed are added to the training
and validation cases (with their true masks), never to test cases.

Cases, never patches, are split into training, validation (early stopping and temperature
calibration) and test sets; confidence intervals come from a bootstrap that resamples whole cases.

torch (and matplotlib for the figures) are imported inside functions.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import classifier, labels
from .checksums import file_sha256
from . import metrics as M
from .errors import InputError

Progress = Callable[[float, str], None]
KINDS = classifier.KINDS

FIRST_CASE_SEED = 10_000       # training phantom seeds start here (seed S: FIRST_CASE_SEED + 1000·S + i)
TRAIN_LESIONS_PER_CASE = 6     # training phantoms are generated with this many lesions (more data per case)
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)  # train, validation, test (by case)
N_BOOTSTRAP = 1000


@dataclass
class LesionDataset:
    """Patches (n, 2, s, s, s) float32, kind labels (n,), case ids (phantom seeds, n), and per-patch details."""

    patches: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    lesion_ids: np.ndarray
    sources: np.ndarray          # 'detected' or 'truth' (the mask the patch was cut with)
    diameters_mm: np.ndarray
    stats: dict = field(default_factory=dict)   # per-case detection counts

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> LesionDataset:
        index = np.asarray(index)
        return LesionDataset(self.patches[index], self.labels[index], self.case_ids[index], self.lesion_ids[index],
                             self.sources[index], self.diameters_mm[index], dict(self.stats))

    def in_cases(self, cases) -> LesionDataset:
        return self.subset(np.flatnonzero(np.isin(self.case_ids, np.asarray(list(cases)))))

    @staticmethod
    def concatenate(parts: Sequence[LesionDataset]) -> LesionDataset:
        stats: dict = {}
        for p in parts:
            stats.update(p.stats)
        return LesionDataset(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                               ("patches", "labels", "case_ids", "lesion_ids", "sources", "diameters_mm")), stats)


DETECTORS = ("training", "pipeline")


def _check_detector(detector: str) -> None:
    if detector not in DETECTORS:
        raise InputError(f"Unknown lesion detector {detector!r}; choose one of {', '.join(DETECTORS)}.")


def detect_lesions(ct, landmarks, detector: str = "training"):
    """Detected lesion instances (the masks the pipeline gives the classifier).

    detector 'training': the EM tissue stage after median denoising (1 mm) of the whole CT; 'pipeline':
    `pipeline.tissue_stage` with `liverloc run`'s defaults (liver found first, its box denoised by curvature
    diffusion), what a run classifies (`liverloc evaluate-classifier --detector` gives each one's figures)."""
    _check_detector(detector)
    if detector == "pipeline":
        from . import pipeline

        _, tissues, _ = pipeline.tissue_stage(ct, landmarks, None, pipeline.PipelineOptions())
        return tissues.lesion_labels
    from . import denoise, tissue_model

    denoised = denoise.denoise(ct, "median", median_radius_mm=1.0)
    return tissue_model.segment_tissues(denoised, landmarks, None).lesion_labels


def case_patches(seed: int, size: str = "small", use_detected: bool = True, include_missed: bool = True,
                 n_lesions: int | None = None, patch: dict | None = None,
                 keep_truth_patches: bool = False, detector: str = "training") -> LesionDataset:
    """Patches of one phantom case (see the module docstring and `build_dataset`).

    Sources: 'detected' (detected mask matched to a true lesion), 'truth' (true mask of a missed lesion,
    include_missed; or every lesion when use_detected is False), 'truth-all' (keep_truth_patches: every true
    lesion again with its true mask, to measure the classifier apart from detection).
    """
    from . import phantom

    ph = phantom.generate_phantom(int(seed), size=size, n_lesions=n_lesions)
    truth_rows = {int(row["id"]): row for row in ph.lesions}
    items: list[tuple[np.ndarray, int, int, str, float]] = []

    def add(mask, mask_id, truth_id, source):
        row = truth_rows[int(truth_id)]
        items.append((classifier.extract_patch(ph.ct, mask, mask_id, patch), KINDS.index(row["kind"]), int(truth_id),
                      source, float(row.get("diameter_mm", np.nan))))

    used_truth: set[int] = set()
    stats = {"truth": len(truth_rows), "detected": 0, "matched": 0, "false_positives": 0}
    if use_detected:
        try:
            detected = detect_lesions(ph.ct, ph.landmarks, detector)
        except InputError:  # the liver was not found (a weakly enhanced, noisy case): every lesion counts as missed
            detected = sitk.Image(ph.truth_lesions.GetSize(), sitk.sitkUInt16)
            detected.CopyInformation(ph.truth_lesions)
            stats["detector_failed"] = 1
        match = M.match_instances(detected, ph.truth_lesions)
        stats.update(detected=len(match["pairs"]) + len(match["false_positives"]), matched=len(match["pairs"]),
                     false_positives=len(match["false_positives"]))
        for det_id, truth_id, _ in match["pairs"]:
            add(detected, det_id, truth_id, "detected")
            used_truth.add(int(truth_id))
    if not use_detected or include_missed:
        for truth_id in truth_rows:
            if truth_id not in used_truth:
                add(ph.truth_lesions, truth_id, truth_id, "truth")
    if use_detected and keep_truth_patches:
        for truth_id in truth_rows:
            add(ph.truth_lesions, truth_id, truth_id, "truth-all")
    n = int({**classifier.PATCH_DEFAULTS, **(patch or {})}["size"])
    patches = np.stack([it[0] for it in items]) if items else np.zeros((0, 2, n, n, n), np.float32)
    return LesionDataset(patches, np.array([it[1] for it in items], int), np.full(len(items), int(seed)),
                         np.array([it[2] for it in items], int), np.array([it[3] for it in items], dtype="<U9"),
                         np.array([it[4] for it in items], float), {int(seed): stats})


def build_dataset(seeds: Sequence[int], size: str = "small", use_detected: bool = True, progress: Progress | None = None,
                  include_missed: bool = True, n_lesions: int | None = None, patch: dict | None = None,
                  keep_truth_patches: bool = False, detector: str = "training") -> LesionDataset:
    """Patches of several phantom cases (one case per seed), with kind labels and case ids.

    Args:
        seeds: phantom seeds (one case each; the case id of its patches).
        size: phantom size ('small' ≈ 2 mm voxels, fast).
        use_detected: cut patches with the detected lesion masks matched to the truth (as inference does);
            False: with the true masks.
        include_missed: also add true lesions the detector missed (true masks). Use it for training cases only.
        n_lesions: lesions per phantom (None: the phantom's own random 0–6).
        patch: patch settings (default `classifier.PATCH_DEFAULTS`).
        keep_truth_patches: also add every true lesion with its true mask (source 'truth-all').
        detector: which lesion detector cuts the detected patches (`detect_lesions`).
    """
    parts = []
    seeds = [int(s) for s in seeds]
    for i, seed in enumerate(seeds):
        if progress is not None:
            progress(i / max(1, len(seeds)), f"phantom case {seed} ({i + 1}/{len(seeds)})")
        parts.append(case_patches(seed, size, use_detected, include_missed, n_lesions, patch, keep_truth_patches,
                                  detector))
    if progress is not None:
        progress(1.0, f"{sum(len(p) for p in parts)} lesion patches from {len(seeds)} cases")
    if not parts:
        raise InputError("No phantom seeds given; give at least one case.")
    return LesionDataset.concatenate(parts)


def split_cases(case_seeds: Sequence[int], seed: int = 0, fractions=SPLIT_FRACTIONS) -> dict[str, list[int]]:
    """Shuffle cases (not patches) and split them into train / validation / test lists."""
    rng = np.random.default_rng(seed)
    cases = np.array(sorted(int(s) for s in case_seeds))
    rng.shuffle(cases)
    n = len(cases)
    n_test = max(1, int(round(fractions[2] * n)))
    n_val = max(1, int(round(fractions[1] * n)))
    if n - n_test - n_val < 1:
        raise InputError(f"{n} cases are too few to split into training, validation and test; use at least 3.")
    return {"test": sorted(cases[:n_test].tolist()), "validation": sorted(cases[n_test:n_test + n_val].tolist()),
            "train": sorted(cases[n_test + n_val:].tolist())}


def training_seeds(n_cases: int, seed: int = 0) -> list[int]:
    """Phantom seeds of the cases `train` generates for a given training seed."""
    return [FIRST_CASE_SEED + 1000 * int(seed) + i for i in range(int(n_cases))]


# ----------------------------------------------------------------------------- augmentation

def augment(x, generator, max_rotation_deg: float = 15.0, scale_range: float = 0.1, shift_vox: float = 1.5,
            hu_jitter: float = 0.1, contrast_jitter: float = 0.08, noise_max: float = 0.1):
    """Random flips (each axis), small rotations and scaling, shifts, HU offset/contrast jitter and noise.

    x: torch tensor (batch, 2, s, s, s); channel 0 = normalised HU, channel 1 = mask. Deterministic for a
    seeded torch.Generator. Intensity changes apply to channel 0 only (units of `hu_scale`, 100 HU).
    """
    import torch
    import torch.nn.functional as F

    b, _, s = x.shape[0], x.shape[1], x.shape[-1]
    flips = torch.rand(b, 3, generator=generator) < 0.5
    angles = (torch.rand(b, 3, generator=generator) * 2 - 1) * np.deg2rad(max_rotation_deg)
    scales = 1 + (torch.rand(b, generator=generator) * 2 - 1) * scale_range
    shifts = (torch.rand(b, 3, generator=generator) * 2 - 1) * (2.0 * shift_vox / s)
    theta = torch.zeros(b, 3, 4)
    for i in range(b):
        cx, cy, cz = torch.cos(angles[i])
        sx, sy, sz = torch.sin(angles[i])
        rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        flip = torch.diag(torch.where(flips[i], -1.0, 1.0))
        theta[i, :, :3] = (rz @ ry @ rx @ flip) * scales[i]
        theta[i, :, 3] = shifts[i]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    hu = out[:, :1]
    offset = (torch.rand(b, 1, 1, 1, 1, generator=generator) * 2 - 1) * hu_jitter
    gain = 1 + (torch.rand(b, 1, 1, 1, 1, generator=generator) * 2 - 1) * contrast_jitter
    sigma = torch.rand(b, 1, 1, 1, 1, generator=generator) * noise_max
    hu = hu * gain + offset + sigma * torch.randn(hu.shape, generator=generator)
    return torch.cat([hu, out[:, 1:]], dim=1)


# ----------------------------------------------------------------------------- training

def _set_determinism(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _predict_logits(net, patches: np.ndarray, batch: int = 64) -> np.ndarray:
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(patches), batch):
            out.append(net(torch.as_tensor(patches[i:i + batch])).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(KINDS)), np.float32)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    p = classifier.softmax(logits / temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)))) if len(y) else float("nan")


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the negative log-likelihood of softmax(logits / T) (grid over 0.25–4)."""
    if len(y) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.25), np.log(4.0), 241))
    return float(grid[int(np.argmin([_nll(logits, y, t) for t in grid]))])


def fit(train_set: LesionDataset, val_set: LesionDataset, epochs: int = 30, seed: int = 0, batch_size: int = 32,
        lr: float = 2e-3, architecture: dict | None = None, progress: Progress | None = None):
    """Train a network on train_set, keep the epoch with the lowest validation loss.

    Class-balanced cross-entropy, AdamW with a cosine learning-rate schedule, augmentation (`augment`).
    Returns (net in eval mode, history dict with per-epoch train_loss, val_loss, val_accuracy, best_epoch).
    """
    import torch
    import torch.nn.functional as F

    _set_determinism(seed)
    arch = {**classifier.ARCHITECTURE_DEFAULTS, **(architecture or {})}
    net = classifier.build_model(**arch)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.as_tensor(train_set.patches)
    y_all = torch.as_tensor(train_set.labels, dtype=torch.long)
    counts = np.bincount(train_set.labels, minlength=len(KINDS)).astype(float)
    weights = torch.as_tensor(np.where(counts > 0, counts.sum() / (len(KINDS) * np.maximum(counts, 1)), 0.0),
                              dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, int(np.ceil(len(train_set) / batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    history: dict = {"train_loss": [], "val_loss": [], "val_accuracy": [], "epoch_seconds": []}
    best = (np.inf, -1, None)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(len(train_set), generator=gen)
        total, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            if len(idx) < 2:
                continue
            xb = augment(x_all[idx], gen)
            loss = F.cross_entropy(net(xb), y_all[idx], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        val_logits = _predict_logits(net, val_set.patches)
        val_loss = _nll(val_logits, val_set.labels)
        val_acc = float(np.mean(val_logits.argmax(1) == val_set.labels)) if len(val_set) else float("nan")
        history["train_loss"].append(total / max(1, seen))
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(val_acc)
        history["epoch_seconds"].append(time.perf_counter() - t0)
        if val_loss < best[0]:
            best = (val_loss, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
        if progress is not None:
            progress((epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs}: train loss {history['train_loss'][-1]:.3f}, "
                                           f"validation loss {val_loss:.3f}, accuracy {val_acc:.2f}")
    if best[2] is not None:
        net.load_state_dict(best[2])
    history["best_epoch"] = int(best[1])
    return net.eval(), history


# ----------------------------------------------------------------------------- metrics

def classification_metrics(probabilities: np.ndarray, y: np.ndarray, case_ids: np.ndarray,
                           n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Metrics of kind probabilities (n, 4) against true kinds, with 95 % case-bootstrap CIs.

    Returns {"n_lesions", "n_cases", "kinds": {accuracy, macro_f1, confusion_matrix, per_kind: {kind: {sensitivity,
    specificity, precision, f1, roc_auc: [estimate, lo, hi]}}}, "malignant": {accuracy, sensitivity, specificity,
    precision, f1, roc_auc, ece: [estimate, lo, hi], counts}, "ece_top_label"}. Malignant = p(metastasis)+p(hcc) ≥ 0.5.
    """
    probabilities = np.asarray(probabilities, float).reshape(-1, len(KINDS))
    y = np.asarray(y, int)
    if len(y) == 0:
        nan3 = [float("nan")] * 3
        return {"n_lesions": 0, "n_cases": 0,
                "kinds": {"accuracy": nan3, "macro_f1": float("nan"), "confusion_matrix": np.zeros((4, 4), int).tolist(),
                          "per_kind": {k: {"sensitivity": nan3, "specificity": nan3, "precision": nan3, "f1": nan3,
                                           "roc_auc": nan3, "n": 0} for k in KINDS}},
                "malignant": {**{k: nan3 for k in ("accuracy", "sensitivity", "specificity", "precision", "f1",
                                                   "roc_auc", "ece")}, "counts": {"tp": 0, "tn": 0, "fp": 0, "fn": 0}},
                "ece_top_label": float("nan")}
    pred = probabilities.argmax(1)
    malignant_cols = [i for i, k in enumerate(KINDS) if k in labels.MALIGNANT_KINDS]
    p_mal = probabilities[:, malignant_cols].sum(1)
    y_mal = np.isin(y, malignant_cols)

    def ci(stat):
        est, lo, hi = M.bootstrap_ci(stat, case_ids, n_resamples=n_bootstrap, seed=seed)
        return [est, lo, hi]

    def binary_stat(key, truth, decision):
        return lambda idx: M.binary_report(truth[idx], decision[idx])[key]

    per_kind = {}
    for k, kind in enumerate(KINDS):
        t, d = y == k, pred == k
        per_kind[kind] = {key: ci(binary_stat(key, t, d)) for key in ("sensitivity", "specificity", "precision", "f1")}
        per_kind[kind]["roc_auc"] = ci(lambda idx, t=t, k=k: M.roc_auc(t[idx], probabilities[idx, k]))
        per_kind[kind]["n"] = int(t.sum())
    report = M.classification_report(y, pred, KINDS)
    mal_decision = p_mal >= 0.5
    malignant = {key: ci(binary_stat(key, y_mal, mal_decision))
                 for key in ("accuracy", "sensitivity", "specificity", "precision", "f1")}
    malignant["roc_auc"] = ci(lambda idx: M.roc_auc(y_mal[idx], p_mal[idx]))
    malignant["ece"] = ci(lambda idx: M.expected_calibration_error(y_mal[idx], p_mal[idx]))
    malignant["counts"] = {k: M.binary_report(y_mal, mal_decision)[k] for k in ("tp", "tn", "fp", "fn")}
    top = probabilities.max(1)
    return {
        "n_lesions": int(len(y)), "n_cases": int(len(np.unique(case_ids))),
        "kinds": {"accuracy": ci(lambda idx: float(np.mean(pred[idx] == y[idx])) if len(idx) else float("nan")),
                  "macro_f1": report["macro_f1"], "confusion_matrix": report["confusion_matrix"], "per_kind": per_kind},
        "malignant": malignant,
        "ece_top_label": M.expected_calibration_error(pred == y, top),
    }


def gradcam_localisation(model, patches: np.ndarray, margin_voxels: int = 3) -> dict:
    """How much Grad-CAM mass lies in/around the lesion (mask dilated by margin_voxels), over patches.

    Returns mean and median fraction and, as the baseline, the mean fraction a uniform map would get.
    """
    fractions, uniform = [], []
    for x in patches:
        cam = classifier.gradcam(model, x)
        fractions.append(classifier.gradcam_mass_near_lesion(cam, x[1], margin_voxels))
        uniform.append(classifier.gradcam_mass_near_lesion(np.ones_like(cam), x[1], margin_voxels))
    f = np.asarray(fractions, float)
    return {"margin_voxels": margin_voxels, "mean_fraction_near_lesion": float(np.nanmean(f)) if len(f) else float("nan"),
            "median_fraction_near_lesion": float(np.nanmedian(f)) if len(f) else float("nan"),
            "uniform_map_fraction": float(np.mean(uniform)) if uniform else float("nan"),
            "n_empty_maps": int(np.sum(~np.isfinite(f)))}


def headline(detail: dict) -> dict[str, float]:
    """The few numbers a summary shows (point estimates)."""
    mal = detail["malignant"]
    return {"kind_accuracy": detail["kinds"]["accuracy"][0], "malignant_auc": mal["roc_auc"][0],
            "malignant_accuracy": mal["accuracy"][0], "malignant_sensitivity": mal["sensitivity"][0],
            "malignant_specificity": mal["specificity"][0], "malignant_f1": mal["f1"][0], "malignant_ece": mal["ece"][0],
            "n_lesions": float(detail["n_lesions"]), "n_cases": float(detail["n_cases"])}


def summary_text(detail: dict, title: str) -> str:
    """Readable lines: kind accuracy and malignant-vs-benign metrics with their 95 % CIs."""
    def fmt(v):
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    mal = detail["malignant"]
    lines = [f"{title}: {detail['n_lesions']} lesions from {detail['n_cases']} cases (95 % CI, bootstrap by case)",
             f"  kind accuracy {fmt(detail['kinds']['accuracy'])}, macro F1 {detail['kinds']['macro_f1']:.3f}",
             f"  malignant vs benign: AUC {fmt(mal['roc_auc'])}, accuracy {fmt(mal['accuracy'])}, "
             f"sensitivity {fmt(mal['sensitivity'])}, specificity {fmt(mal['specificity'])}, "
             f"precision {fmt(mal['precision'])}, F1 {fmt(mal['f1'])}, ECE {fmt(mal['ece'])}"]
    if "gradcam" in detail:
        g = detail["gradcam"]
        lines.append(f"  Grad-CAM mass within {g['margin_voxels']} patch voxels of the lesion: mean "
                     f"{g['mean_fraction_near_lesion']:.2f} (a uniform map: {g['uniform_map_fraction']:.2f})")
    for kind, row in detail["kinds"]["per_kind"].items():
        lines.append(f"  {kind} (n={row['n']}): sensitivity {fmt(row['sensitivity'])}, specificity {fmt(row['specificity'])}, "
                     f"F1 {fmt(row['f1'])}, AUC {fmt(row['roc_auc'])}")
    return "\n".join(lines)


def _sub(progress: Progress | None, start: float, stop: float) -> Progress | None:
    if progress is None:
        return None
    return lambda f, m: progress(start + (stop - start) * max(0.0, min(1.0, f)), m)


def train(out_dir, n_cases: int = 120, epochs: int = 30, seed: int = 0, progress: Progress | None = None,
          size: str = "small", use_detected: bool = True, lesions_per_case: int | None = TRAIN_LESIONS_PER_CASE,
          n_bootstrap: int = N_BOOTSTRAP, architecture: dict | None = None, patch: dict | None = None,
          batch_size: int = 32, detector: str = "training") -> dict:
    """Generate phantom cases, split them by case, train, calibrate, test; write weights, model card and figures.

    Writes to out_dir: ``lesion_classifier.safetensors``, ``lesion_classifier.json`` (model card: data,
    seeds, split, architecture, patch geometry, temperature, metrics on the held-out test cases, date, versions),
    ``training_curves.png``, ``confusion_matrix.png``. Returns the model card.

    Cases: `training_seeds(n_cases, seed)`, each phantom with `lesions_per_case` lesions (None: the
    phantom's own 0–6). Training and validation patches: detected lesions, plus the missed ones with
    their true masks (validation drives early stopping and the temperature, so it needs every kind). Test
    metrics: on the detected lesions only (what the pipeline classifies), and on all test lesions with
    their true masks (the classifier alone, detection aside). `architecture`, `patch` override
    `classifier.ARCHITECTURE_DEFAULTS` / `PATCH_DEFAULTS` (smaller ones make quick test runs). `detector`: the
    lesion detector whose masks the patches are cut with (`detect_lesions`; recorded in the model card).
    """
    import torch

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if n_cases < 3:
        raise InputError(f"{n_cases} cases are too few; train on at least 3 phantom cases (120 for the shipped model).")
    if epochs < 1:
        raise InputError("Train for at least one epoch.")
    _check_detector(detector)
    arch = {**classifier.ARCHITECTURE_DEFAULTS, **(architecture or {})}
    patch = {**classifier.PATCH_DEFAULTS, **(patch or {})}
    seeds = training_seeds(n_cases, seed)
    split = split_cases(seeds, seed)
    sets = {}
    for name, (lo, hi) in (("train", (0.0, 0.3)), ("validation", (0.3, 0.35)), ("test", (0.35, 0.4))):
        sets[name] = build_dataset(split[name], size, use_detected, _sub(progress, lo, hi),
                                   include_missed=(name != "test") or not use_detected, n_lesions=lesions_per_case,
                                   patch=patch, keep_truth_patches=(name == "test"), detector=detector)
    train_set, val_set = sets["train"], sets["validation"]
    test_all = sets["test"]
    test_set = test_all.subset(np.flatnonzero(test_all.sources != "truth-all")) if use_detected else test_all
    test_truth = test_all.subset(np.flatnonzero(test_all.sources == "truth-all")) if use_detected else test_all
    t_data = time.perf_counter() - t_start
    if len(train_set) == 0 or len(np.unique(train_set.labels)) < 2:
        raise InputError("The training cases hold fewer than two lesion kinds; use more cases.")
    net, history = fit(train_set, val_set, epochs=epochs, seed=seed, batch_size=batch_size, architecture=arch,
                       progress=_sub(progress, 0.4, 0.95))
    val_logits = _predict_logits(net, val_set.patches)
    temperature = fit_temperature(val_logits, val_set.labels)
    trained = classifier.LesionClassifier(net, {"temperature": temperature, "patch": patch})
    detail = classification_metrics(trained.predict_proba(test_set.patches), test_set.labels, test_set.case_ids,
                                    n_bootstrap, seed)
    detail["gradcam"] = gradcam_localisation(trained, test_set.patches)
    detail_truth = classification_metrics(trained.predict_proba(test_truth.patches), test_truth.labels,
                                          test_truth.case_ids, n_bootstrap, seed)
    if progress is not None:
        progress(0.97, "writing weights, model card and figures")
    card = {
        "name": "LiverLocalization lesion classifier",
        "kinds": list(KINDS),
        "malignant_kinds": sorted(labels.MALIGNANT_KINDS),
        "architecture": arch,
        "patch": patch,
        "temperature": temperature,
        "n_parameters": int(sum(p.numel() for p in net.parameters())),
        "data": {
            "source": f"LiverLocalization phantom, size {size!r}",
            "masks": (("detected lesions (median denoising 1 mm + tissue_model.segment_tissues)" if detector == "training"
                       else "detected lesions (pipeline.tissue_stage, liverloc run's defaults)")
                      + " matched to the truth by IoU; in training and validation cases, lesions the detector missed "
                      "are added with their true masks; test metrics on detected lesions ('test') and on all lesions "
                      "with true masks ('test_true_masks')") if use_detected else "true lesion masks",
            "detector": detector if use_detected else None,
            "lesions_per_training_case": lesions_per_case,
            "case_seeds": {k: v for k, v in split.items()},
            "n_patches": {"train": len(train_set), "validation": len(val_set), "test": len(test_set),
                          "test_true_masks": len(test_truth)},
            "train_patches_by_mask": {s: int(np.sum(train_set.sources == s)) for s in ("detected", "truth")},
            "kind_counts": {name: {kind: int(np.sum(d.labels == k)) for k, kind in enumerate(KINDS)}
                            for name, d in (("train", train_set), ("validation", val_set), ("test", test_set))},
            "detection": {name: _detection_totals(d.stats) for name, d in
                          (("train", train_set), ("validation", val_set), ("test", test_set))},
        },
        "training": {"command": f"liverloc train --out DIR --cases {n_cases} --epochs {epochs} --seed {seed}",
                     "n_cases": n_cases, "epochs": epochs, "seed": seed, "best_epoch": history["best_epoch"],
                     "history": {k: [round(float(v), 5) for v in vals] for k, vals in history.items() if isinstance(vals, list)},
                     "data_seconds": round(t_data, 1), "total_seconds": None},
        "metrics": {"test": headline(detail), "test_detail": detail,
                    "test_true_masks": headline(detail_truth), "test_true_masks_detail": detail_truth},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "liverlocalization": _package_version()},
    }
    card["training"]["total_seconds"] = round(time.perf_counter() - t_start, 1)
    weights = out / "lesion_classifier.safetensors"
    classifier.save_model(net, card, weights)
    from .figures import classifier as figures

    figures.plot_training_curves(history, out / "training_curves.png")
    figures.plot_confusion_matrices(
        [(np.asarray(detail["kinds"]["confusion_matrix"]),
          f"test, detected lesions (n={detail['n_lesions']}, {detail['n_cases']} cases)"),
         (np.asarray(detail_truth["kinds"]["confusion_matrix"]),
          f"test, true masks (n={detail_truth['n_lesions']}, {detail_truth['n_cases']} cases)")],
        KINDS, out / "confusion_matrix.png")
    if progress is not None:
        progress(1.0, "done")
    return json.loads(classifier.model_card_path(weights).read_text(encoding="utf-8"))


def _detection_totals(stats: dict) -> dict:
    keys = ("truth", "detected", "matched", "false_positives")
    return {k: int(sum(s.get(k, 0) for s in stats.values())) for k in keys}


def _package_version() -> str:
    from . import __version__

    return __version__


# ----------------------------------------------------------------------------- evaluation

def evaluation_seeds(weights_path=None, n_cases: int = 40, first_seed: int | None = None) -> list[int]:
    """Seeds of evaluation cases never used to train, validate or test the model (after the card's seeds)."""
    if first_seed is None:
        card_path = classifier.model_card_path(weights_path or classifier.DEFAULT_WEIGHTS)
        try:
            used = [s for v in json.loads(card_path.read_text(encoding="utf-8"))["data"]["case_seeds"].values() for s in v]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"Cannot read the training seeds from {card_path} ({err}); give --first-seed.") from err
        first_seed = max(used) + 1
    return list(range(int(first_seed), int(first_seed) + int(n_cases)))


def evaluate(weights_path, seeds: Sequence[int], out_dir, progress: Progress | None = None, size: str = "small",
             use_detected: bool = True, n_lesions: int | None = None, n_bootstrap: int = N_BOOTSTRAP,
             detector: str = "pipeline") -> dict:
    """Evaluate weights on phantom cases: kinds and malignant vs benign with 95 % case-bootstrap CIs.

    Two sets of metrics: ``metrics`` on the detected lesions matched to the truth (what the pipeline
    classifies; missed lesions and false-positive detections are counted in ``detection``), and
    ``metrics_true_masks`` on every true lesion cut with its true mask (the classifier alone).
    With use_detected=False only the latter. n_lesions: lesions per phantom (None: the phantom's own 0–6).
    detector: 'pipeline' (default: the lesions `liverloc run` would classify) or 'training' (the detector the
    weights were trained on; see `detect_lesions`).
    Writes ``evaluation.json`` and ``confusion_matrix.png`` to out_dir; returns the report (``summary``:
    readable lines).
    """
    model = classifier.load_model(weights_path)
    case_seeds = model.card.get("data", {}).get("case_seeds", {})
    fitted = {s for name in ("train", "validation") for s in case_seeds.get(name, [])}
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("No evaluation seeds given; give at least one case.")
    overlap = sorted(set(seeds) & fitted)
    if overlap:
        raise InputError(f"Evaluation seeds {overlap[:10]} were used to train or calibrate this model; evaluate on "
                         "other seeds (the default picks seeds after the model card's; its test seeds are allowed).")
    _check_detector(detector)
    data = build_dataset(seeds, size, use_detected, _sub(progress, 0.0, 0.85), include_missed=not use_detected,
                         n_lesions=n_lesions, patch=model.patch, keep_truth_patches=use_detected, detector=detector)
    if progress is not None:
        progress(0.9, f"classifying {len(data)} lesion patches")
    probs = model.predict_proba(data.patches) if len(data) else np.zeros((0, len(KINDS)))
    main = data.sources != "truth-all"
    truth = data.sources == ("truth-all" if use_detected else "truth")
    detail = classification_metrics(probs[main], data.labels[main], data.case_ids[main], n_bootstrap)
    detail["gradcam"] = gradcam_localisation(model, data.patches[main])
    detail_truth = classification_metrics(probs[truth], data.labels[truth], data.case_ids[truth], n_bootstrap)
    report = {
        "weights": str(Path(weights_path or classifier.DEFAULT_WEIGHTS)),
        "weights_sha256": file_sha256(model.path),
        "seeds": seeds, "size": size, "lesions_per_case": n_lesions,
        "masks": "detected lesions matched to truth" if use_detected else "true lesion masks",
        "detector": detector if use_detected else None,
        "detection": _detection_totals(data.stats),
        "metrics": detail, "headline": headline(detail),
        "metrics_true_masks": detail_truth, "headline_true_masks": headline(detail_truth),
        "lesions": [{"case": int(c), "truth_id": int(i), "mask": str(src), "kind": KINDS[int(y)],
                     "predicted": KINDS[int(np.argmax(p))],
                     "malignant_probability": float(model.malignant_probability(p[None])[0])}
                    for c, i, src, y, p in zip(data.case_ids, data.lesion_ids, data.sources, data.labels, probs)],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    title = f"{len(seeds)} phantom cases (seeds {min(seeds)}-{max(seeds)})"
    det = report["detection"]
    lines = []
    if use_detected:
        lines.append(f"Detection ({detector} detector): {det['matched']} of {det['truth']} true lesions found, "
                     f"{det['false_positives']} false positive(s) (not classified).")
        lines.append(summary_text(detail, f"Detected lesions, {title}"))
    lines.append(summary_text(detail_truth, f"All lesions with their true masks, {title}"))
    report["summary"] = "\n".join(lines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from .figures import classifier as figures
    from .pipeline import write_json

    write_json(report, out / "evaluation.json")
    panels = [(np.asarray(detail_truth["kinds"]["confusion_matrix"]),
               f"true masks (n={detail_truth['n_lesions']}, {detail_truth['n_cases']} cases)")]
    if use_detected:
        panels.insert(0, (np.asarray(detail["kinds"]["confusion_matrix"]),
                          f"detected lesions (n={detail['n_lesions']}, {detail['n_cases']} cases)"))
    figures.plot_confusion_matrices(panels, KINDS, out / "confusion_matrix.png")
    if progress is not None:
        progress(1.0, "done")
    return report
