"""Denoising comparison: for each method the denoised slice and the difference to the input, with measurements.

One row per method (the input first), three columns: the image (liver window, zoomed on the liver
when a mask is given), the difference input − result (±60 HU: noise removed, and any edge or
structure removed by mistake), and a profile across the liver's border (mean HU against signed
distance to the border, showing how sharp the edge stays). Row titles carry the measured noise sd
in parenchyma, edge steepness and PSNR (from `denoise.denoise_metrics`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import common


def _border_profile(arr: np.ndarray, mask: np.ndarray, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    inside = ndimage.distance_transform_edt(mask, sampling=spacing_zyx)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_zyx)
    signed = np.where(mask, inside, -outside)
    step = max(0.5, float(min(spacing_zyx)))
    bins = np.arange(-8.0, 8.0 + step / 2, step)
    which = np.digitize(signed, bins)
    centres = (bins[:-1] + bins[1:]) / 2
    band = (which >= 1) & (which < len(bins))
    sums = np.bincount(which[band], weights=arr[band], minlength=len(bins))
    counts = np.bincount(which[band], minlength=len(bins))
    prof = sums[1:len(bins)] / np.maximum(counts[1:len(bins)], 1)
    return centres, prof


def _fmt(m: dict | None) -> str:
    if not m:
        return ""
    parts = []
    if "noise_sd_hu" in m:
        parts.append(f"noise sd {m['noise_sd_hu']:.1f} HU")
    if "edge_hu_per_mm" in m:
        parts.append(f"edge {m['edge_hu_per_mm']:.1f} HU/mm")
    if "psnr_db" in m:
        parts.append(f"PSNR {m['psnr_db']:.1f} dB")
    if "time_s" in m:
        parts.append(f"{m['time_s']:.1f} s")
    return ", ".join(parts)


def plot_denoise_comparison(ct: sitk.Image, results: dict[str, sitk.Image], path, metrics: dict | None = None,
                            liver_mask: sitk.Image | None = None, clean: sitk.Image | None = None) -> Path:
    """Write the comparison PNG; results maps method name → denoised image (CT geometry), metrics method → dict.

    metrics may also hold an 'input' entry (the measurements of the noisy CT); liver_mask chooses the slice
    and the zoom and gives the border profile; clean (a noise-free reference) adds a row when given.
    """
    metrics = metrics or {}
    rows = [("input", ct)] + ([("noise-free", clean)] if clean is not None else []) + list(results.items())
    arrays = {name: sitk.GetArrayFromImage(common.to_lps_aligned(img)).astype(np.float32) for name, img in rows}
    ct_arr = arrays["input"]
    mask = None
    if liver_mask is not None:
        mask = sitk.GetArrayFromImage(common.to_lps_aligned(liver_mask, sitk.sitkNearestNeighbor, 0.0)) > 0
    aligned = common.to_lps_aligned(ct)
    spacing_xyz = aligned.GetSpacing()
    spacing_zyx = np.asarray(spacing_xyz)[::-1]
    if mask is not None and mask.any():
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        z = int(zs[len(zs) // 2])
        ys, xs = np.flatnonzero(mask[z].any(1)), np.flatnonzero(mask[z].any(0))
        crop = (slice(max(0, ys[0] - 10), ys[-1] + 11), slice(max(0, xs[0] - 10), xs[-1] + 11))
    else:
        z = ct_arr.shape[0] // 2
        crop = (slice(None), slice(None))
    aspect = common.aspect(spacing_xyz, "axial")
    fig, axes = common.new_figure(len(rows), 3, size_per_panel=3.4, title="Denoising: image, input − result, border profile")
    for r, (name, _img) in enumerate(rows):
        arr = arrays[name]
        ax = axes[r]
        ax[0].imshow(common.window(arr[z][crop], *common.LIVER_WINDOW), cmap="gray", aspect=aspect)
        ax[0].set_ylabel(name, fontsize=9)
        ax[0].set_title(_fmt(metrics.get(name)), fontsize=7)
        if name == "input":
            ax[1].text(0.5, 0.5, "(reference)", ha="center", va="center", transform=ax[1].transAxes)
        else:
            ax[1].imshow(ct_arr[z][crop] - arr[z][crop], cmap="RdBu_r", vmin=-60, vmax=60, aspect=aspect)
        if mask is not None and mask.any():
            centres, prof = _border_profile(arr, mask, spacing_zyx)
            ref_c, ref_p = _border_profile(arrays["noise-free"] if clean is not None else ct_arr, mask, spacing_zyx)
            ax[2].plot(ref_c, ref_p, color="0.6", lw=1, label="noise-free" if clean is not None else "input")
            ax[2].plot(centres, prof, color="C3", lw=1.2, label=name)
            ax[2].axvline(0, color="k", lw=0.5)
            ax[2].set_xticks([-8, -4, 0, 4, 8])
            ax[2].set_yticks(np.linspace(np.nanmin(ref_p), np.nanmax(ref_p), 3).round(-1))
            ax[2].set_xlabel("distance inside liver border (mm)", fontsize=7)
            ax[2].set_ylabel("mean HU", fontsize=7)
            ax[2].tick_params(labelsize=6)
            ax[2].legend(fontsize=6, loc="lower right")
        else:
            ax[2].axis("off")
    return common.save(fig, Path(path))
