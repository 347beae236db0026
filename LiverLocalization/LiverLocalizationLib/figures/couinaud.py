"""Figures of the Couinaud stage: segments on CT with landmarks and lesions, and the landmark geometry.

Slices follow `figures.common`: radiological convention (patient's right on the image's left, anterior
up; coronal with superior up), on an LPS-aligned resampling so oblique volumes look the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import couinaud, geometry, labels
from . import common

MARKER = {"IVC": "s", "IVC_inferior": "s", "RHV": "^", "MHV": "^", "LHV": "^", "RPV": "o", "LPV": "o", "UP": "o"}


def _aligned(ct: sitk.Image, label_map: sitk.Image, lesion_labels: sitk.Image | None):
    ct_a = common.to_lps_aligned(ct)
    lab_a = sitk.Resample(label_map, ct_a, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label_map.GetPixelID())
    les_a = None
    if lesion_labels is not None:
        les_a = sitk.Resample(lesion_labels, ct_a, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lesion_labels.GetPixelID())
    return ct_a, lab_a, les_a


def _to_index(image: sitk.Image, p) -> np.ndarray:
    """Continuous (x, y, z) index of an LPS point in an LPS-aligned image."""
    return geometry.lps_to_index(image, np.asarray(p, dtype=float))


def _overlay(ax, view, ct, lab, les, index: int, aspect: float) -> None:
    """CT slice `view(array, index)` with the segments (45 % opacity), lesion outlines in red and segment names."""
    cmap, norm = common.label_colors(common.COUINAUD_COLORS)
    ax.imshow(common.window(view(ct, index)), cmap="gray", aspect=aspect)
    ax.imshow(np.ma.masked_equal(view(lab, index), 0), cmap=cmap, norm=norm, alpha=0.45, aspect=aspect,
              interpolation="nearest")
    if les is not None and (view(les, index) > 0).any():
        ax.contour(view(les, index) > 0, levels=[0.5], colors="red", linewidths=1.2)
    _label_names(ax, view(lab, index), _segment_names(lab))


def _axial_panel(ax, ct, lab, les, z: int, spacing, landmarks, image, title: str, box=None) -> None:
    _overlay(ax, common.axial, ct, lab, les, z, common.aspect(spacing, "axial"))
    placed = []
    for name, p in landmarks.items():
        idx = _to_index(image, p)
        if abs(idx[2] - z) * spacing[2] <= 12.0:  # landmarks within 12 mm of the slice
            ax.plot(idx[0], idx[1], MARKER.get(name, "x"), color="white", markeredgecolor="black", markersize=6)
            placed.append((name, idx[0], idx[1]))
    if box is not None:
        _zoom_axial(ax, box)
    _landmark_names(ax, placed)
    ax.set_title(title, fontsize=9)


def _box_is_free(box, boxes, markers, pad: float = 3.0) -> bool:
    """True when a text box (x0, y0, x1, y1, points) overlaps none of `boxes` and holds no marker (within `pad`)."""
    x0, y0, x1, y1 = box
    clear_of_names = all(x1 < b[0] or x0 > b[2] or y1 < b[1] or y0 > b[3] for b in boxes)
    return clear_of_names and all(not (x0 - pad < mx < x1 + pad and y0 - pad < my < y1 + pad) for mx, my in markers)


def _landmark_names(ax, placed, fontsize: float = 7.0) -> None:
    """Write each landmark's name beside its marker (`placed`: (name, x, y) in data coordinates; call it once
    the axes' limits are final). Each name takes the first of eight places round its marker where its box
    (estimated from the font size) overlaps no name already written and no marker, so that landmarks side by
    side (the veins at the confluence) stay legible; the first place when none is free."""
    to_points = 72.0 / ax.figure.dpi
    markers = [ax.transData.transform((x, y)) * to_points for _, x, y in placed]
    boxes: list[tuple[float, float, float, float]] = []
    for name, x, y in placed:
        px, py = ax.transData.transform((x, y)) * to_points
        w, h = 0.62 * fontsize * len(name), fontsize
        places = [(4, 3), (4, -3 - h), (-4 - w, 3), (-4 - w, -3 - h), (4, 4 + h), (4, -4 - 2 * h),
                  (-w / 2, 6), (-w / 2, -6 - h)]
        candidates = [(px + dx, py + dy, px + dx + w, py + dy + h) for dx, dy in places]
        k = next((i for i, box in enumerate(candidates) if _box_is_free(box, boxes, markers)), 0)
        dx, dy = places[k]
        boxes.append(candidates[k])
        ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", color="white", fontsize=fontsize)


def _liver_box(lab: np.ndarray, spacing, margin_mm: float = 15.0):
    """(z0, z1, y0, y1, x0, x1) index bounds of the labelled voxels with a margin (whole array if empty)."""
    nz = np.argwhere(lab > 0)
    if nz.size == 0:
        return 0, lab.shape[0] - 1, 0, lab.shape[1] - 1, 0, lab.shape[2] - 1
    m = np.ceil(margin_mm / np.asarray(spacing, float)[::-1]).astype(int)
    lo = np.maximum(nz.min(0) - m, 0)
    hi = np.minimum(nz.max(0) + m, np.asarray(lab.shape) - 1)
    return lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]


def _zoom_axial(ax, box) -> None:
    ax.set_xlim(box[4] - 0.5, box[5] + 0.5)
    ax.set_ylim(box[3] + 0.5, box[2] - 0.5)


def _zoom_coronal(ax, box, nz: int) -> None:
    ax.set_xlim(box[4] - 0.5, box[5] + 0.5)
    ax.set_ylim(nz - 1 - box[0] + 0.5, nz - 1 - box[1] - 0.5)


def _segment_names(label_array: np.ndarray) -> dict[int, str]:
    """Label → name of the map's output: nine segments (IVa, IVb) when it holds label 9, else eight."""
    return labels.couinaud_names(9 if (np.asarray(label_array) == labels.COUINAUD_IVB).any() else 8)


def _label_names(ax, slice_labels: np.ndarray, names: dict[int, str]) -> None:
    for k, name in names.items():
        yy, xx = np.nonzero(slice_labels == k)
        if yy.size > 30:
            ax.text(np.median(xx), np.median(yy), name, color="black", fontsize=8,
                    ha="center", va="center", weight="bold")


def plot_couinaud(ct: sitk.Image, couinaud_labels: sitk.Image, landmarks: dict[str, np.ndarray],
                  lesion_labels: sitk.Image | None, path) -> Path:
    """Axial slices at the hepatic-vein, segment I and portal levels, a coronal slice through the IVC, and a
    3-D scatter of the segments (subsampled liver voxels, LPS mm) with the landmarks and lesions; PNG at path.

    ct: HU; couinaud_labels: 0/1..8 (or 1..9: 4 = IVa, 9 = IVb) on the CT's grid; landmarks: label → LPS mm; lesion_labels: instances
    (outlined in red) or None.
    """
    ct_a, lab_a, les_a = _aligned(ct, couinaud_labels, lesion_labels)
    ct_arr = sitk.GetArrayFromImage(ct_a)
    lab = sitk.GetArrayFromImage(lab_a)
    les = sitk.GetArrayFromImage(les_a) if les_a is not None else None
    spacing = ct_a.GetSpacing()
    nz = lab.shape[0]

    def z_of(name, default):
        if name in landmarks:
            return int(np.clip(round(_to_index(ct_a, landmarks[name])[2]), 0, nz - 1))
        return default

    zs = np.flatnonzero(lab.any(axis=(1, 2)))
    mid = int(zs[len(zs) // 2]) if zs.size else nz // 2
    below_rpv = int(np.clip(z_of("RPV", mid) - round(10.0 / spacing[2]), 0, nz - 1))
    levels = [("hepatic veins (LHV)", z_of("LHV", mid)), ("segment I", mid), ("10 mm below RPV", below_rpv)]
    if "IVC" in landmarks and "RPV" in landmarks:
        levels[1] = ("segment I", int(round((z_of("IVC", mid) + z_of("RPV", mid)) / 2)))
    if les is not None and les.any():
        levels[1] = ("largest lesion", common.slices_through_labels(les, 1)[0])
    fig, axes = common.new_figure(2, 3, 3.6, title="Couinaud segments")
    box = _liver_box(lab, spacing)
    for ax, (title, z) in zip(axes[0], levels):
        _axial_panel(ax, ct_arr, lab, les, z, spacing, landmarks, ct_a, f"axial: {title}", box)
    # coronal through the IVC (or the liver's middle)
    y = int(np.clip(round(_to_index(ct_a, landmarks["IVC"])[1] - 15.0 / spacing[1]), 0, lab.shape[1] - 1)) \
        if "IVC" in landmarks else lab.shape[1] // 2
    ax = axes[1, 0]
    _overlay(ax, common.coronal, ct_arr, lab, les, y, common.aspect(spacing, "coronal"))
    placed = []
    for name, p in landmarks.items():
        idx = _to_index(ct_a, p)
        if abs(idx[1] - y) * spacing[1] <= 20.0:
            ax.plot(idx[0], nz - 1 - idx[2], MARKER.get(name, "x"), color="white", markeredgecolor="black", markersize=6)
            placed.append((name, idx[0], nz - 1 - idx[2]))
    _zoom_coronal(ax, box, nz)
    _landmark_names(ax, placed)
    ax.set_title("coronal, 15 mm anterior to the IVC", fontsize=9)
    _scatter_3d(fig, axes[1, 1], couinaud_labels, landmarks, lesion_labels)
    _legend(axes[1, 2], couinaud_labels)
    return common.save(fig, path)


def _scatter_3d(fig, ax_slot, couinaud_labels, landmarks, lesion_labels, n_points: int = 25000) -> None:
    ax_slot.remove()
    ax = fig.add_subplot(2, 3, 5, projection="3d")
    zyx, pts = couinaud.liver_points(couinaud_labels)
    values = sitk.GetArrayViewFromImage(couinaud_labels)[zyx]
    rng = np.random.default_rng(0)
    pick = rng.choice(pts.shape[0], size=min(n_points, pts.shape[0]), replace=False) if pts.shape[0] else []
    q = pts[pick]  # LPS mm; seen from the front (anterior), so the patient's right is on the viewer's left
    colours = np.array([common.COUINAUD_COLORS[int(v)] for v in values[pick]]) if len(pick) else None
    ax.scatter(q[:, 0], q[:, 1], q[:, 2], c=colours, s=1.5, alpha=0.5, linewidths=0)
    for name, p in landmarks.items():
        ax.scatter([p[0]], [p[1]], [p[2]], color="black", s=18, marker=MARKER.get(name, "x"))
        ax.text(p[0], p[1], p[2], name, fontsize=6)
    if lesion_labels is not None:
        _, lpts = couinaud.liver_points(lesion_labels)
        if lpts.shape[0]:
            sel = rng.choice(lpts.shape[0], size=min(1500, lpts.shape[0]), replace=False)
            ax.scatter(lpts[sel, 0], lpts[sel, 1], lpts[sel, 2], color="red", s=1.5, alpha=0.6, linewidths=0)
    ax.view_init(elev=15, azim=-75)  # camera in front (−y, anterior), a little to the patient's left
    ax.set_xlabel("x: R → L (LPS mm)", fontsize=6)
    ax.set_ylabel("y: A → P", fontsize=6)
    ax.set_zlabel("z: I → S", fontsize=6)
    ax.tick_params(labelsize=5)
    ax.set_title("3-D: segments, landmarks, lesions (red)", fontsize=9)


def _legend(ax, couinaud_labels) -> None:
    from matplotlib.patches import Patch

    values = sitk.GetArrayViewFromImage(couinaud_labels)
    counts = np.bincount(values[values > 0].ravel(), minlength=labels.COUINAUD_IVB + 1)
    total = max(int(counts[1:].sum()), 1)
    vox_ml = geometry.voxel_volume_ml(couinaud_labels)
    handles = [Patch(color=common.COUINAUD_COLORS[k],
                     label=f"{name:>4s}  {counts[k] * vox_ml:7.0f} ml  {100 * counts[k] / total:4.1f} %")
               for k, name in _segment_names(values).items()]
    ax.legend(handles=handles, loc="center", fontsize=8, frameon=False, title="segment, volume, share")
    ax.axis("off")


def plot_geometry(ct: sitk.Image, couinaud_labels: sitk.Image, landmarks: dict[str, np.ndarray], path) -> Path:
    """How the planes method cuts the liver: axial slices with the hepatic half-planes (IVC axis → RHV, MHV,
    LHV, UP), the posterior cut and the segment I ellipse; a coronal slice with the portal heights (RPV, LPV)."""
    ct_a, lab_a, _ = _aligned(ct, couinaud_labels, None)
    ct_arr = sitk.GetArrayFromImage(ct_a)
    lab = sitk.GetArrayFromImage(lab_a)
    spacing = np.asarray(ct_a.GetSpacing())
    frame = couinaud.landmark_frame(landmarks)
    fig, axes = common.new_figure(1, 3, 4.2, title="Couinaud planes from landmarks")
    nz = lab.shape[0]
    z_hv = int(np.clip(round(_to_index(ct_a, landmarks["LHV"])[2]), 0, nz - 1))
    z_caud = int(np.clip(round(_to_index(ct_a, frame.origin + 0.5 * frame.height["RPV"] * frame.axis)[2]), 0, nz - 1))
    for ax, z, title in ((axes[0, 0], z_hv, "axial at the hepatic veins"), (axes[0, 1], z_caud, "axial through segment I")):
        _axial_panel(ax, ct_arr, lab, None, z, spacing, landmarks, ct_a, title, _liver_box(lab, spacing))
        h = float((geometry.index_to_lps(ct_a, [0, 0, z]) - frame.origin) @ frame.axis)
        centre = frame.origin + h * frame.axis
        c_idx = _to_index(ct_a, centre)
        rays = {"RHV": frame.azimuth["RHV"], "MHV": frame.azimuth["MHV"], "LHV": frame.azimuth["LHV"], "cut": frame.cut}
        if "UP" in frame.azimuth:
            rays["UP"] = frame.azimuth["UP"]
        for name, phi in rays.items():
            end = centre + 120.0 * (np.cos(phi) * frame.e1 + np.sin(phi) * frame.e2)
            e_idx = _to_index(ct_a, end)
            ax.plot([c_idx[0], e_idx[0]], [c_idx[1], e_idx[1]], "--" if name in ("cut", "UP") else "-", color="white", lw=1)
            ax.annotate(f"{name} {np.degrees(phi) % 360:.0f}°", (e_idx[0], e_idx[1]), color="yellow", fontsize=7)
        # segment I ellipse (shown when the slice is within its heights)
        b = couinaud._horizontal(frame.bifurcation - frame.origin, frame.axis)
        dist_b = float(np.linalg.norm(b))
        f = b / max(dist_b, 1e-6)
        g = np.cross(frame.axis, f)
        t = np.linspace(0, 2 * np.pi, 100)
        ring = (centre[None] + (couinaud.CAUDATE_CENTRE * dist_b + couinaud.CAUDATE_ALONG * dist_b * np.cos(t))[:, None] * f
                + (couinaud.CAUDATE_LEFT * dist_b + couinaud.CAUDATE_ACROSS * dist_b * np.sin(t))[:, None] * g)
        r_idx = _to_index(ct_a, ring)
        ax.plot(r_idx[:, 0], r_idx[:, 1], ":", color="cyan", lw=1)
        _zoom_axial(ax, _liver_box(lab, spacing))
    ax = axes[0, 2]
    y = int(np.clip(round(_to_index(ct_a, frame.origin)[1] - 15.0 / spacing[1]), 0, lab.shape[1] - 1))
    _overlay(ax, common.coronal, ct_arr, lab, None, y, common.aspect(spacing, "coronal"))
    _zoom_coronal(ax, _liver_box(lab, spacing), nz)
    for name in ("RPV", "LPV", "IVC", "IVC_inferior"):
        if name in landmarks:
            idx = _to_index(ct_a, landmarks[name])
            row = nz - 1 - idx[2]
            ax.axhline(row, color="white", ls="-" if name in ("RPV", "LPV") else ":", lw=0.8)
            ax.annotate(f"{name} height", (ax.get_xlim()[0] + 2, row - 1), color="yellow", fontsize=7)
    ax.set_title("coronal: portal planes (per side) and segment I heights", fontsize=9)
    return common.save(fig, path)
