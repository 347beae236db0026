"""Shared helpers for figures: CT windowing, slice choice, label colours, saving.

Slices are shown in radiological convention: axial slices with the patient's right on the image's
left and anterior up, coronal with superior up. Images are first resampled to an LPS-aligned
grid so that oblique or flipped volumes look the same as axis-aligned ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import labels

ABDOMEN_WINDOW = (60.0, 400.0)  # level, width in HU
LIVER_WINDOW = (100.0, 200.0)


def window(array_hu: np.ndarray, level: float = ABDOMEN_WINDOW[0], width: float = ABDOMEN_WINDOW[1]) -> np.ndarray:
    """Map HU to [0, 1] grey values with a window level/width."""
    return np.clip((np.asarray(array_hu, dtype=np.float32) - (level - width / 2.0)) / width, 0.0, 1.0)


def to_lps_aligned(image: sitk.Image, interpolator=sitk.sitkLinear, default_value: float = -1024.0) -> sitk.Image:
    """Resample an image onto an identity-direction grid covering it (same spacing sorted to axes)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if np.allclose(direction, np.eye(3), atol=1e-6):
        return image
    size = np.asarray(image.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)], float)
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in corners])
    # spacing of each LPS axis: the spacing of the index axis most aligned with it
    spacing_axes = np.asarray(image.GetSpacing())[np.argmax(np.abs(direction), axis=1)]
    lo, hi = pts.min(0), pts.max(0)
    new_size = [int(np.ceil((h - l) / s)) + 1 for l, h, s in zip(lo, hi, spacing_axes)]
    return sitk.Resample(image, new_size, sitk.Transform(), interpolator, tuple(lo), tuple(spacing_axes),
                         tuple(np.eye(3).ravel()), default_value, image.GetPixelID())


def axial(array_zyx: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z of an LPS-aligned [z, y, x] array (x = patient left → image right; y = posterior → down)."""
    return array_zyx[z]


def coronal(array_zyx: np.ndarray, y: int) -> np.ndarray:
    """Coronal slice y of an LPS-aligned [z, y, x] array, superior up."""
    return array_zyx[::-1, y, :]


def aspect(spacing_xyz, view: str) -> float:
    """Pixel aspect ratio (height/width) for imshow of a view of an LPS-aligned image."""
    sx, sy, sz = spacing_xyz
    return sy / sx if view == "axial" else sz / sx


def label_colors(mapping: dict[int, tuple[float, float, float]]):
    """A matplotlib ListedColormap and norm mapping integer labels to colours (0 transparent)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    top = max(mapping) if mapping else 1
    colours = [(0, 0, 0, 0)] + [(*mapping.get(k, (0.5, 0.5, 0.5)), 1.0) for k in range(1, top + 1)]
    return ListedColormap(colours), BoundaryNorm(np.arange(-0.5, top + 1.5), top + 1)


# label → colour of both Couinaud outputs: 1..8, and 9 = IVb of the nine-segment one (4 = IV or IVa: one colour)
COUINAUD_COLORS = {k: style.color for k, style in {**labels.COUINAUD_STYLES, **labels.couinaud_styles(9)}.items()}
TISSUE_COLORS = {labels.PARENCHYMA: labels.LIVER.color, labels.LESION: labels.LESION_STYLE.color,
                 labels.VESSEL: labels.VESSELS.color}


def slices_through_labels(label_array_zyx: np.ndarray, n: int = 3, fallback_mask: np.ndarray | None = None) -> list[int]:
    """Up to n axial indices through the largest labelled objects (centre slices), else through the fallback mask."""
    values = [v for v in np.unique(label_array_zyx) if v != 0]
    picks: list[int] = []
    if values:
        counts = {v: int(np.sum(label_array_zyx == v)) for v in values}
        for v in sorted(values, key=lambda v: -counts[v]):
            z = int(np.round(np.argwhere(label_array_zyx == v)[:, 0].mean()))
            if all(abs(z - p) > 2 for p in picks):
                picks.append(z)
            if len(picks) == n:
                break
    if len(picks) < n and fallback_mask is not None and fallback_mask.any():
        zs = np.flatnonzero(fallback_mask.any(axis=(1, 2)))
        for q in np.linspace(0.3, 0.7, n - len(picks)):
            picks.append(int(zs[int(q * (len(zs) - 1))]))
    if not picks:
        picks = [label_array_zyx.shape[0] // 2]
    return sorted(picks)


def save(fig, path) -> Path:
    """Save a figure as PNG (150 dpi), create the folder, close the figure; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def new_figure(n_rows: int, n_cols: int, size_per_panel: float = 3.2, title: str | None = None):
    """A figure with a grid of axes (Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size_per_panel * n_cols, size_per_panel * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig, axes
