"""The stage panel: input, resized view, noise, denoised, liver mask, segmented tissues, on axial slices.

One row per axial slice (through the largest lesions, else through the liver), six columns:
the input CT (abdominal window, whole slice, liver box outlined), the resized view (the liver's
bounding box enlarged), the noise removed by denoising (input − denoised, ±60 HU), the denoised
view, the liver mask, and the segmented tissues (parenchyma, lesions with their instance outlines,
vessels). Oblique or flipped volumes are resampled to an LPS-aligned grid first, so the slices show
the patient in radiological convention (patient's right on the image's left, anterior up).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import common


def _aligned(image: sitk.Image, label: bool = False, default: float = -1024.0) -> np.ndarray:
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    out = common.to_lps_aligned(image, interpolator=interp, default_value=0.0 if label else default)
    return sitk.GetArrayFromImage(out)


def _liver_box(mask_zyx: np.ndarray, z: int, margin: int = 8):
    sl = mask_zyx[z] if mask_zyx[z].any() else mask_zyx.any(axis=0)
    if not sl.any():
        return 0, mask_zyx.shape[1], 0, mask_zyx.shape[2]
    ys, xs = np.flatnonzero(sl.any(1)), np.flatnonzero(sl.any(0))
    return (max(0, ys[0] - margin), min(mask_zyx.shape[1], ys[-1] + margin + 1),
            max(0, xs[0] - margin), min(mask_zyx.shape[2], xs[-1] + margin + 1))


def plot_overview(ct: sitk.Image, denoised: sitk.Image, liver_mask: sitk.Image, tissue: sitk.Image,
                  lesion_labels: sitk.Image, path, n_slices: int = 3, title: str | None = None) -> Path:
    """Write the stage panel PNG to `path` and return it. All images share the CT's geometry (HU / labels)."""
    from matplotlib.patches import Rectangle

    ct_a = _aligned(ct)
    den_a = _aligned(denoised)
    liver_a = _aligned(liver_mask, label=True) > 0
    tissue_a = _aligned(tissue, label=True)
    lesion_a = _aligned(lesion_labels, label=True)
    spacing = common.to_lps_aligned(ct).GetSpacing() if not np.allclose(
        np.asarray(ct.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-6) else ct.GetSpacing()
    aspect = common.aspect(spacing, "axial")
    zs = common.slices_through_labels(lesion_a, n=n_slices, fallback_mask=liver_a)
    cmap, norm = common.label_colors(common.TISSUE_COLORS)
    columns = ("input", "resized view", "noise removed", "denoised", "liver mask", "segmented")
    n_lesions = int(lesion_a.max())
    fig, axes = common.new_figure(len(zs), len(columns), title=title or
                                  f"LiverLocalization stages: {n_lesions} lesion(s); "
                                  f"liver {liver_a.sum() * np.prod(spacing) / 1000:.0f} ml")
    for row, z in enumerate(zs):
        y0, y1, x0, x1 = _liver_box(liver_a, z)
        crop = (slice(y0, y1), slice(x0, x1))
        ax = axes[row]
        ax[0].imshow(common.window(ct_a[z]), cmap="gray", aspect=aspect)
        ax[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=0.8))
        ax[0].set_ylabel(f"axial z={z}")
        ax[1].imshow(common.window(ct_a[z][crop]), cmap="gray", aspect=aspect)
        noise = ct_a[z][crop].astype(np.float32) - den_a[z][crop].astype(np.float32)
        ax[2].imshow(noise, cmap="RdBu_r", vmin=-60, vmax=60, aspect=aspect)
        ax[3].imshow(common.window(den_a[z][crop]), cmap="gray", aspect=aspect)
        ax[4].imshow(common.window(den_a[z][crop]), cmap="gray", aspect=aspect)
        if liver_a[z][crop].any():
            ax[4].contour(liver_a[z][crop].astype(float), [0.5], colors=[common.TISSUE_COLORS[1]], linewidths=1.0)
        ax[4].imshow(np.ma.masked_where(~liver_a[z][crop], liver_a[z][crop]), cmap="autumn", alpha=0.25, aspect=aspect)
        ax[5].imshow(common.window(den_a[z][crop]), cmap="gray", aspect=aspect)
        ax[5].imshow(np.ma.masked_equal(tissue_a[z][crop], 0), cmap=cmap, norm=norm, alpha=0.55,
                     interpolation="nearest", aspect=aspect)
        lab = lesion_a[z][crop]
        for value in np.unique(lab[lab > 0]):
            ax[5].contour((lab == value).astype(float), [0.5], colors="red", linewidths=0.8)
            ys, xs = np.nonzero(lab == value)
            ax[5].text(xs.mean(), ys.min() - 2, str(int(value)), color="red", fontsize=7, ha="center", va="bottom")
        for col, name in enumerate(columns):
            if row == 0:
                ax[col].set_title(name, fontsize=9)
    return common.save(fig, path)
