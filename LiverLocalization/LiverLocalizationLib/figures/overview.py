"""The stage panel: input, liver zoom, noise removed, denoised, liver mask, segmented tissues, on axial slices.

One row per axial slice: the slice through the centre of each of the largest lesions (else slices through the
liver), named by its position in mm (Slicer's S coordinate). Six columns: the input CT (abdominal window, whole
slice, the zoomed box outlined), the zoom on the liver's box, the noise removed by denoising (input − denoised,
HU, with a colour bar), the denoised zoom, the liver mask, and the segmented tissues (parenchyma, vessels,
lesions outlined with their ids). The first two columns carry a scale bar in mm and the patient direction
letters; the other columns show the same zoom. Oblique or flipped volumes are resampled to an LPS-aligned grid
first, so the slices show the patient in radiological convention (patient's right on the image's left,
anterior up); the letters are computed from the shown grid's direction matrix.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .. import labels
from . import common

MASK_COLOR = (1.0, 0.15, 0.0)


def _aligned(image: sitk.Image, label: bool = False, default: float = -1024.0) -> np.ndarray:
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return common.aligned_array(image, interpolator=interp, default_value=0.0 if label else default)


def _liver_box(mask_zyx: np.ndarray, z: int, margin: int = 8):
    sl = mask_zyx[z] if mask_zyx[z].any() else mask_zyx.any(axis=0)
    if not sl.any():
        return 0, mask_zyx.shape[1], 0, mask_zyx.shape[2]
    ys, xs = np.flatnonzero(sl.any(1)), np.flatnonzero(sl.any(0))
    return (max(0, ys[0] - margin), min(mask_zyx.shape[1], ys[-1] + margin + 1),
            max(0, xs[0] - margin), min(mask_zyx.shape[2], xs[-1] + margin + 1))


def lesion_centre_slices(lesion_zyx: np.ndarray, n: int, fallback_mask: np.ndarray | None = None
                         ) -> list[tuple[int, list[int]]]:
    """Up to n axial indices, each the slice through the centre (mean voxel) of one of the largest lesions, with
    the ids of the lesions centred on it (lesions whose centres round to one slice share it); slices through the
    fallback mask (no lesion ids) fill up when there are fewer lesions. Sorted from inferior to superior."""
    rows: dict[int, list[int]] = {}
    for value, centre in common.label_centres_zyx(lesion_zyx):
        z = int(np.round(centre[0]))
        if z in rows or len(rows) < n:
            rows.setdefault(z, []).append(int(value))
    if len(rows) < n and fallback_mask is not None and fallback_mask.any():
        zs = np.flatnonzero(fallback_mask.any(axis=(1, 2)))
        for q in np.linspace(0.3, 0.7, n - len(rows)):
            z = int(zs[int(q * (len(zs) - 1))])
            if all(abs(z - r) > 2 for r in rows):
                rows[z] = []
    if not rows:
        rows[lesion_zyx.shape[0] // 2] = []
    return sorted(rows.items())


def plot_overview(ct: sitk.Image, denoised: sitk.Image, liver_mask: sitk.Image, tissue: sitk.Image,
                  lesion_labels: sitk.Image, path, n_slices: int = 3, title: str | None = None,
                  return_figure: bool = False):
    """Write the stage panel PNG to `path` and return it (or, return_figure, the Figure). All images share the
    CT's geometry (HU / labels)."""
    from matplotlib.patches import Rectangle

    grid = common.to_lps_aligned(ct)  # the grid shown (identity direction)
    ct_a = sitk.GetArrayViewFromImage(grid)
    den_a = _aligned(denoised)
    liver_a = _aligned(liver_mask, label=True) > 0
    tissue_a = _aligned(tissue, label=True)
    lesion_a = _aligned(lesion_labels, label=True)
    spacing = grid.GetSpacing()
    aspect = common.view_aspect(spacing, "axial")
    rows = lesion_centre_slices(lesion_a, n_slices, fallback_mask=liver_a)
    cmap, norm = common.label_colors(common.TISSUE_COLORS)
    mask_cmap, mask_norm = common.label_colors({1: MASK_COLOR})
    n_lesions = len(np.unique(lesion_a[lesion_a > 0]))
    fig, axes = common.new_figure(len(rows), 6, title=title or
                                  f"LiverLocalization stages: {n_lesions} lesion(s); "
                                  f"liver {liver_a.sum() * np.prod(spacing) / 1000:.0f} ml")
    noise_image = None
    for r, (z, centred) in enumerate(rows):
        y0, y1, x0, x1 = _liver_box(liver_a, z)
        crop = (slice(y0, y1), slice(x0, x1))
        zoom = min(ct_a.shape[1] / (y1 - y0), ct_a.shape[2] / (x1 - x0))
        ax = axes[r]
        ax[0].imshow(common.window(ct_a[z]), cmap="gray", aspect=aspect)
        ax[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=0.8))
        where = common.slice_position(grid, "axial", z)
        centre_of = f"\ncentre of lesion {', '.join(map(str, centred))}" if centred else ""
        ax[0].set_ylabel(f"axial {where}{centre_of}", fontsize=8)
        ax[1].imshow(common.window(ct_a[z][crop]), cmap="gray", aspect=aspect)
        ax[1].set_title(f"liver zoom ×{zoom:.1f}", fontsize=9)
        noise = ct_a[z][crop].astype(np.float32) - den_a[z][crop].astype(np.float32)
        noise_image = ax[2].imshow(noise, cmap="RdBu_r", vmin=-60, vmax=60, aspect=aspect)
        ax[3].imshow(common.window(den_a[z][crop]), cmap="gray", aspect=aspect)
        ax[4].imshow(common.window(den_a[z][crop]), cmap="gray", aspect=aspect)
        if liver_a[z][crop].any():
            ax[4].contour(liver_a[z][crop].astype(float), [0.5], colors=[common.TISSUE_COLORS[labels.PARENCHYMA]],
                          linewidths=1.0)
        ax[4].imshow(np.ma.masked_equal(liver_a[z][crop].astype(np.uint8), 0), cmap=mask_cmap, norm=mask_norm,
                     alpha=0.3, interpolation="nearest", aspect=aspect)
        ax[5].imshow(common.window(den_a[z][crop]), cmap="gray", aspect=aspect)
        ax[5].imshow(np.ma.masked_equal(tissue_a[z][crop], 0), cmap=cmap, norm=norm, alpha=0.55,
                     interpolation="nearest", aspect=aspect)
        lab = lesion_a[z][crop]
        for value in np.unique(lab[lab > 0]):
            ax[5].contour((lab == value).astype(float), [0.5], colors="red", linewidths=0.8)
            ys, xs = np.nonzero(lab == value)
            ax[5].text(xs.mean(), ys.min() - 1, str(int(value)), color="white", fontsize=7, ha="center",
                       va="bottom", weight="bold", path_effects=common._outline())
        for a in ax[:2]:
            common.add_orientation(a, grid, "axial")
            common.add_scale_bar(a, spacing[0])
        if r == 0:
            ax[0].set_title("input (box: zoom)", fontsize=9)
            for a, name in zip(ax[2:], ("noise removed (same zoom)", "denoised", "liver mask", "segmented")):
                a.set_title(name, fontsize=9)
        bar = fig.colorbar(noise_image, ax=ax[2], fraction=0.05, pad=0.02, ticks=[-60, -30, 0, 30, 60])
        bar.set_label("input − denoised (HU)", fontsize=6)
        bar.ax.tick_params(labelsize=6)
    handles = [common.patch_handle("liver mask", MASK_COLOR, alpha=0.3),
               common.patch_handle("parenchyma", common.TISSUE_COLORS[labels.PARENCHYMA], alpha=0.6),
               common.patch_handle("vessel", common.TISSUE_COLORS[labels.VESSEL], alpha=0.6),
               common.patch_handle("lesion", common.TISSUE_COLORS[labels.LESION], alpha=0.6),
               common.line_handle("lesion outline (id)", "red"),
               common.line_handle("zoomed box", "yellow", lw=1.0)]
    common.figure_legend(fig, handles, ncol=6)
    return common.finish(fig, path, return_figure)
