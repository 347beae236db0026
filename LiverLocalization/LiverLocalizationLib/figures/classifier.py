"""Figures of the lesion classifier: training curves, confusion matrix, Grad-CAM panels.

Patch panels show the axial slice through the lesion centre of the LPS-aligned patch, in radiological
convention (patient's right on the image's left, anterior up).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from . import common


def plot_training_curves(history: dict, path):
    """Training and validation loss, validation accuracy per epoch; the kept (best) epoch marked."""
    fig, axes = common.new_figure(1, 2, size_per_panel=4.0, title="Lesion classifier training")
    epochs = np.arange(1, len(history.get("train_loss", [])) + 1)
    ax = axes[0, 0]
    ax.plot(epochs, history.get("train_loss", []), label="training (augmented)")
    ax.plot(epochs, history.get("val_loss", []), label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax2 = axes[0, 1]
    ax2.plot(epochs, history.get("val_accuracy", []), color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation accuracy (kinds)")
    ax2.set_ylim(0, 1.02)
    best = history.get("best_epoch")
    from matplotlib.ticker import AutoLocator, MaxNLocator

    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.yaxis.set_major_locator(AutoLocator())
        if best is not None and best >= 0:
            a.axvline(best + 1, color="grey", linestyle=":", label="kept epoch")
    ax.legend(frameon=False)
    return common.save(fig, path)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path, title: str = ""):
    """Counts with row-normalised shading (rows: true kind, columns: predicted kind)."""
    return plot_confusion_matrices([(cm, title)], class_names, path)


def plot_confusion_matrices(panels: Sequence[tuple[np.ndarray, str]], class_names: Sequence[str], path):
    """Side-by-side confusion matrices [(counts, panel title), …], row-normalised shading."""
    fig, axes = common.new_figure(1, len(panels), size_per_panel=4.5)
    fig.subplots_adjust(wspace=0.55)
    for ax, (cm, title) in zip(axes[0], panels):
        _confusion_panel(ax, np.asarray(cm), class_names, title)
    return common.save(fig, path)


def _confusion_panel(ax, cm: np.ndarray, class_names: Sequence[str], title: str) -> None:
    if title:
        ax.set_title(title, fontsize=9)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=30)
    ax.set_yticks(range(len(class_names)))
    ax.set_yticklabels(class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


def _patch_panels(axes_row, hu_slice, mask_slice, cam_slice, title: str, grid: sitk.Image | None = None,
                  z: int | None = None):
    """CT, CT with the lesion mask, Grad-CAM overlay of one axial patch slice; with the patch's grid (`grid`,
    slice `z`): scale bars, patient direction letters and the slice's position in mm. Returns the heat map image."""
    from .. import classifier

    p = classifier.PATCH_DEFAULTS
    level, width = common.ABDOMEN_WINDOW
    grey = common.window(hu_slice * p["hu_scale"] + p["hu_center"], level, width)
    aspect = common.view_aspect(grid.GetSpacing(), "axial") if grid is not None else 1.0
    axes_row[0].imshow(grey, cmap="gray", vmin=0, vmax=1, aspect=aspect)
    axes_row[0].set_title(title, fontsize=8)
    axes_row[1].imshow(grey, cmap="gray", vmin=0, vmax=1, aspect=aspect)
    axes_row[1].contour(mask_slice, levels=[0.5], colors=["yellow"], linewidths=1)
    axes_row[1].set_title("lesion mask", fontsize=8)
    axes_row[2].imshow(grey, cmap="gray", vmin=0, vmax=1, aspect=aspect)
    heat = axes_row[2].imshow(cam_slice, cmap="jet", alpha=0.45, vmin=0, vmax=1, aspect=aspect)
    axes_row[2].contour(mask_slice, levels=[0.5], colors=["white"], linewidths=0.8)
    axes_row[2].set_title("Grad-CAM", fontsize=8)
    if grid is not None:
        axes_row[0].set_ylabel(f"axial {common.slice_position(grid, 'axial', z)}\n(lesion centre)", fontsize=8)
        for ax in axes_row[:3]:
            common.add_orientation(ax, grid, "axial")
            common.add_scale_bar(ax, grid.GetSpacing()[0])
    return heat


def _cam_legend(fig, heat, axes) -> None:
    right = max(ax.get_position().x1 for ax in axes.ravel())
    bar = fig.colorbar(heat, cax=fig.add_axes((right + 0.02, 0.3, 0.015, 0.4)))
    bar.set_label("Grad-CAM (0: no weight, 1: most weight for the predicted kind)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    common.figure_legend(fig, [common.line_handle("lesion mask outline (white on Grad-CAM)", "yellow")], ncol=1)


def plot_patch_gradcam(patch: np.ndarray, cam: np.ndarray, path, title: str = "", grid: sitk.Image | None = None,
                       return_figure: bool = False):
    """One patch (2, n, n, n) and its Grad-CAM (n, n, n): centre axial slice of HU, mask and heat map (with the
    patch's grid, `classifier.extract_patch(..., return_reference=True)`'s second value: mm scale, directions)."""
    fig, axes = common.new_figure(1, 3, title=title or None)
    z = patch.shape[1] // 2
    heat = _patch_panels(axes[0], patch[0, z], patch[1, z], cam[z], "CT (normalised HU)", grid, z)
    _cam_legend(fig, heat, axes)
    return common.finish(fig, path, return_figure)


def plot_gradcam_panels(ct: sitk.Image, lesion_labels: sitk.Image, gradcam: sitk.Image, lesions: Sequence[dict], path,
                        max_lesions: int = 6, return_figure: bool = False):
    """One row per classified lesion (largest first, at most max_lesions): CT, mask, Grad-CAM overlay.

    Each row is the axial slice through the lesion centre of its LPS-aligned classifier patch (radiological:
    R on the left, A up; letters from the patch grid's direction), named by its position in mm, with a scale bar;
    the Grad-CAM volume (CT geometry) is resampled onto the same patch grid. Returns the path (or the Figure).
    """
    from .. import classifier

    rows = [r for r in lesions if r.get("kind")]
    sizes = {r["id"]: r.get("volume_ml", 0.0) for r in rows}
    rows = sorted(rows, key=lambda r: -sizes.get(r["id"], 0.0))[:max_lesions]
    fig, axes = common.new_figure(max(1, len(rows)), 3, size_per_panel=2.6, title="Lesion classification: Grad-CAM")
    heat = None
    for i, row in enumerate(rows):
        patch, ref = classifier.extract_patch(ct, lesion_labels, row["id"], return_reference=True)
        cam = sitk.GetArrayFromImage(sitk.Resample(gradcam, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        z = patch.shape[1] // 2
        title = f"lesion {row['id']}: {row['kind']}, p(malignant) {row.get('malignant_probability', float('nan')):.2f}"
        heat = _patch_panels(axes[i], patch[0, z], patch[1, z], cam[z], title, ref, z)
    if heat is not None:
        _cam_legend(fig, heat, axes)
    return common.finish(fig, path, return_figure)
