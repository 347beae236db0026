"""Figures of the Couinaud stage: segments on CT with landmarks and lesions, and the landmark geometry.

Slices follow `figures.common`: radiological convention (patient's right on the image's left, anterior
up; coronal and sagittal with superior up), on an LPS-aligned resampling so oblique or flipped volumes look the
same; every panel carries the patient direction letters (from the shown grid's direction matrix), a scale bar in
mm and its position in mm (Slicer's RAS: S for axial, A for coronal, R for sagittal). Landmarks are drawn only on
slices within `common.LANDMARK_SLAB_MM` of them; each lesion gets the axial slice through its centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import couinaud, geometry, labels
from . import common

MARKER = {"IVC": "s", "IVC_inferior": "s", "RHV": "^", "MHV": "^", "LHV": "^", "RPV": "o", "LPV": "o", "UP": "o"}
MARKER_MEANING = (("s", "inferior vena cava (IVC, IVC_inferior)"), ("^", "hepatic vein (RHV, MHV, LHV)"),
                  ("o", "portal vein (RPV, LPV, UP)"))
LESION_COLOR = "red"


def _aligned(ct: sitk.Image, label_map: sitk.Image, lesion_labels: sitk.Image | None):
    ct_a = common.to_lps_aligned(ct)
    lab_a = common.on_grid(label_map, ct_a)
    les_a = common.on_grid(lesion_labels, ct_a) if lesion_labels is not None else None
    return ct_a, lab_a, les_a


def _to_index(image: sitk.Image, p) -> np.ndarray:
    """Continuous (x, y, z) index of an LPS point in an LPS-aligned image."""
    return geometry.lps_to_index(image, np.asarray(p, dtype=float))


def _zoom(ax, view: str, box, shape_zyx) -> None:
    """Limit a panel to the liver's box (z0, z1, y0, y1, x0, x1) in the view's screen coordinates."""
    lo = common.view_point(view, (box[4], box[2], box[0]), shape_zyx)
    hi = common.view_point(view, (box[5], box[3], box[1]), shape_zyx)
    (c0, c1), (r0, r1) = sorted((lo[0], hi[0])), sorted((lo[1], hi[1]))
    ax.set_xlim(c0 - 0.5, c1 + 0.5)
    ax.set_ylim(r1 + 0.5, r0 - 0.5)


def landmarks_on_slice(grid: sitk.Image, view: str, index: float, landmarks: dict[str, np.ndarray],
                       slab_mm: float = common.LANDMARK_SLAB_MM) -> list[str]:
    """The landmarks within slab_mm of a slice (the ones its panel draws)."""
    return [name for name, p in landmarks.items() if common.distance_to_slice_mm(grid, view, index, p) <= slab_mm]


def _panel(ax, view: str, ct, lab, les, index: int, grid: sitk.Image, landmarks, title: str, box=None,
           lesion_ids: bool = True, segment_names: dict[int, str] | None = None) -> None:
    """One slice: CT, the segments (45 % opacity) with their names (`segment_names`: `_segment_names(lab)`, given
    when known), lesion outlines (with ids), the landmarks within the slab (with names), zoomed on `box`; direction
    letters, scale bar and the slice's position."""
    shape = lab.shape
    cmap, norm = common.label_colors(common.COUINAUD_COLORS)
    aspect = common.view_aspect(grid.GetSpacing(), view)
    ax.imshow(common.window(common.view_slice(ct, view, index)), cmap="gray", aspect=aspect)
    lab_slice = common.view_slice(lab, view, index)
    ax.imshow(np.ma.masked_equal(lab_slice, 0), cmap=cmap, norm=norm, alpha=0.45, aspect=aspect,
              interpolation="nearest")
    if box is not None:
        _zoom(ax, view, box, shape)
    obstacles = []
    if les is not None:
        les_slice = common.view_slice(les, view, index)
        for value in np.unique(les_slice[les_slice > 0]):
            ax.contour(les_slice == value, levels=[0.5], colors=LESION_COLOR, linewidths=1.2)
            if lesion_ids:
                ys, xs = np.nonzero(les_slice == value)
                ax.text(xs.mean(), ys.mean(), str(int(value)), color="white", fontsize=7, ha="center", va="center",
                        weight="bold", path_effects=common._outline())
                obstacles.append((xs.mean(), ys.mean()))
    placed = []
    for name in landmarks_on_slice(grid, view, index, landmarks):
        x, y = common.view_point(view, _to_index(grid, landmarks[name]), shape)
        ax.plot(x, y, MARKER.get(name, "x"), color="white", markeredgecolor="black", markersize=6,
                gid=f"landmark:{name}")
        placed.append((name, x, y))
    names = _label_names(ax, lab_slice, segment_names or _segment_names(lab), [(x, y) for _, x, y in placed] + obstacles,
                         aspect)
    _landmark_names(ax, placed, names)
    common.add_orientation(ax, grid, view)
    common.add_scale_bar(ax, grid.GetSpacing()[common.VIEWS[view][1]])
    ax.set_title(f"{title}\n{view} {common.slice_position(grid, view, index)}", fontsize=8)


def _box_is_free(box, boxes, markers, pad: float = 3.0) -> bool:
    """True when a text box (x0, y0, x1, y1, points) overlaps none of `boxes` and holds no marker (within `pad`)."""
    x0, y0, x1, y1 = box
    clear_of_names = all(x1 < b[0] or x0 > b[2] or y1 < b[1] or y0 > b[3] for b in boxes)
    return clear_of_names and all(not (x0 - pad < mx < x1 + pad and y0 - pad < my < y1 + pad) for mx, my in markers)


def _text_box(ax, x, y, text: str, fontsize: float, centred: bool = False):
    """Estimated box (points) of a text at data (x, y): from its anchor, or centred on it."""
    to_points = 72.0 / ax.figure.dpi
    px, py = ax.transData.transform((x, y)) * to_points
    w, h = 0.62 * fontsize * len(text), fontsize
    return (px - w / 2, py - h / 2, px + w / 2, py + h / 2) if centred else (px, py, px + w, py + h)


def _landmark_names(ax, placed, obstacles=(), fontsize: float = 7.0) -> None:
    """Write each landmark's name beside its marker (`placed`: (name, x, y) in data coordinates; call it once
    the axes' limits are final). Each name takes the first of eight places round its marker where its box
    (estimated from the font size) overlaps no name already written (segment names: `obstacles`, boxes in
    points) and no marker, so that landmarks side by side (the veins at the confluence) stay legible; the first
    place when none is free."""
    to_points = 72.0 / ax.figure.dpi
    markers = [ax.transData.transform((x, y)) * to_points for _, x, y in placed]
    boxes: list[tuple[float, float, float, float]] = list(obstacles)
    for name, x, y in placed:
        px, py = ax.transData.transform((x, y)) * to_points
        w, h = 0.62 * fontsize * len(name), fontsize
        places = [(4, 3), (4, -3 - h), (-4 - w, 3), (-4 - w, -3 - h), (4, 4 + h), (4, -4 - 2 * h),
                  (-w / 2, 6), (-w / 2, -6 - h)]
        candidates = [(px + dx, py + dy, px + dx + w, py + dy + h) for dx, dy in places]
        k = next((i for i, box in enumerate(candidates) if _box_is_free(box, boxes, markers)), 0)
        dx, dy = places[k]
        boxes.append(candidates[k])
        ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", color="white", fontsize=fontsize,
                    path_effects=common._outline(), gid=f"landmark:{name}")


def _liver_box(lab: np.ndarray, spacing, margin_mm: float = 15.0):
    """(z0, z1, y0, y1, x0, x1) index bounds of the labelled voxels with a margin (whole array if empty)."""
    box = geometry.bounding_box(lab > 0)
    if box is None:
        return 0, lab.shape[0] - 1, 0, lab.shape[1] - 1, 0, lab.shape[2] - 1
    m = np.ceil(margin_mm / np.asarray(spacing, float)[::-1]).astype(int)
    lo = np.maximum(np.array([s.start for s in box]) - m, 0)
    hi = np.minimum(np.array([s.stop - 1 for s in box]) + m, np.asarray(lab.shape) - 1)
    return lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]


def _segment_names(label_array: np.ndarray) -> dict[int, str]:
    """Label → name of the map's output: nine segments (IVa, IVb) when it holds label 9, else eight."""
    return labels.couinaud_names(9 if (np.asarray(label_array) == labels.COUINAUD_IVB).any() else 8)


def _label_names(ax, slice_labels: np.ndarray, names: dict[int, str], avoid=(), aspect: float = 1.0,
                 fontsize: float = 8.0) -> list[tuple[float, float, float, float]]:
    """Write each segment's name at the point of its area farthest from its border and from the markers and
    lesion ids in `avoid` ((x, y) data points), inside the panel's limits; returns the names' boxes (points)."""
    from scipy import ndimage

    (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()
    rows, cols = np.indices(slice_labels.shape)
    visible = (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
    keep_out = np.ones(slice_labels.shape, bool)
    radius = 6.0 + fontsize  # pixels (columns) round each marker
    for mx, my in avoid:
        keep_out &= (cols - mx) ** 2 + ((rows - my) * aspect) ** 2 > radius ** 2
    boxes = []
    for k, name in names.items():
        area = (slice_labels == k) & visible
        if area.sum() <= 30:
            continue
        # the distance map of the area's bounding box with a background margin of one pixel equals the whole
        # slice's there (the nearest background pixel is never farther out), at a fraction of its cost
        rs, cs = np.flatnonzero(area.any(1)), np.flatnonzero(area.any(0))
        r0, c0 = max(rs[0] - 1, 0), max(cs[0] - 1, 0)
        crop = (slice(r0, rs[-1] + 2), slice(c0, cs[-1] + 2))
        depth = ndimage.distance_transform_edt(area[crop], sampling=(aspect, 1.0)) * np.where(keep_out[crop], 1.0, 0.2)
        r, c = np.unravel_index(np.argmax(depth), depth.shape)
        r, c = r + r0, c + c0
        ax.text(c, r, name, color="black", fontsize=fontsize, ha="center", va="center", weight="bold",
                gid=f"segment:{name}")
        boxes.append(_text_box(ax, c, r, name, fontsize, centred=True))
    return boxes


def _right_lobe_x(lab: np.ndarray, x_rpv: int) -> int:
    """x index midway between the right portal vein and the liver's right border (x runs to the patient's left)."""
    xs = np.flatnonzero(lab.any(axis=(0, 1)))
    return int(round((xs[0] + x_rpv) / 2)) if xs.size else x_rpv


def _lesion_centres(les: np.ndarray | None) -> list[tuple[int, np.ndarray]]:
    """(id, centre (x, y, z) index) of each lesion, largest first."""
    if les is None or not les.any():
        return []
    return [(value, centre[::-1]) for value, centre in common.label_centres_zyx(les)]


def plot_couinaud(ct: sitk.Image, couinaud_labels: sitk.Image, landmarks: dict[str, np.ndarray],
                  lesion_labels: sitk.Image | None, path, max_lesions: int = 3, return_figure: bool = False):
    """Axial slices at the hepatic-vein, portal and infra-portal levels; a coronal slice through the IVC and a
    sagittal one through the right lobe (midway between the right portal vein and the liver's right border); the axial slice through each lesion's centre (largest first, at
    most max_lesions); the legend. PNG at path; returns the path (or, return_figure, the Figure).

    ct: HU; couinaud_labels: 0/1..8 (or 1..9: 4 = IVa, 9 = IVb) on the CT's grid; landmarks: label → LPS mm;
    lesion_labels: instances (outlined in red, with their ids) or None.
    """
    grid, lab_a, les_a = _aligned(ct, couinaud_labels, lesion_labels)
    ct_arr = sitk.GetArrayViewFromImage(grid)  # views: the images stay referenced until the figure is written
    lab = sitk.GetArrayViewFromImage(lab_a)
    les = sitk.GetArrayViewFromImage(les_a) if les_a is not None else None
    spacing = grid.GetSpacing()
    shape = lab.shape
    box = _liver_box(lab, spacing)
    names = _segment_names(lab)
    zs = np.flatnonzero(lab.any(axis=(1, 2)))
    mid = np.array([shape[2] // 2, shape[1] // 2, int(zs[len(zs) // 2]) if zs.size else shape[0] // 2], float)

    def at(name, axis, offset_mm=0.0):
        p = _to_index(grid, landmarks[name]) if name in landmarks else mid
        return int(np.clip(round(p[axis] + offset_mm / spacing[axis]), 0, shape[2 - axis] - 1))

    centres = _lesion_centres(les)[:max_lesions]
    n_rows = 3 if centres else 2
    fig, axes = common.new_figure(n_rows, 3, 3.6, title="Couinaud segments")
    panels = [("hepatic veins (LHV)", "axial", at("LHV", 2)), ("portal bifurcation (RPV)", "axial", at("RPV", 2)),
              ("10 mm below RPV", "axial", at("RPV", 2, -10.0)), ("through the IVC", "coronal", at("IVC", 1)),
              ("right lobe, midway RPV to border", "sagittal", _right_lobe_x(lab, at("RPV", 0)))]
    for ax, (title, view, index) in zip(axes.ravel(), panels):
        _panel(ax, view, ct_arr, lab, les, index, grid, landmarks, title, box, segment_names=names)
    _legend(axes[1, 2], couinaud_labels)
    for ax, (value, centre) in zip(axes[2] if centres else [], centres):
        z = int(np.clip(round(centre[2]), 0, shape[0] - 1))
        segment = lab[z, int(round(centre[1])), int(round(centre[0]))]
        where = f" in {names.get(int(segment), '?')}" if segment else ""
        _panel(ax, "axial", ct_arr, lab, les, z, grid, landmarks, f"lesion {value} centre{where}", box,
               segment_names=names)
    for ax in (axes[2, len(centres):] if centres else []):
        ax.axis("off")
    return common.finish(fig, path, return_figure)


def _legend(ax, couinaud_labels) -> None:
    values = sitk.GetArrayViewFromImage(couinaud_labels)
    counts = np.bincount(values[values > 0].ravel(), minlength=labels.COUINAUD_IVB + 1)
    total = max(int(counts[1:].sum()), 1)
    vox_ml = geometry.voxel_volume_ml(couinaud_labels)
    segments = [common.patch_handle(f"{name:>4s}  {counts[k] * vox_ml:5.0f} ml  {100 * counts[k] / total:4.1f} %",
                                    common.COUINAUD_COLORS[k])
                for k, name in _segment_names(values).items()]
    marks = [common.marker_handle(text, marker) for marker, text in MARKER_MEANING]
    marks.append(common.line_handle("lesion outline (id)", LESION_COLOR))
    first = ax.legend(handles=segments, loc="upper left", fontsize=7, frameon=False,
                      title="segment, volume, share", title_fontsize=7, prop={"family": "monospace", "size": 7})
    ax.add_artist(first)
    ax.legend(handles=marks, loc="lower left", fontsize=7, frameon=False, title_fontsize=7,
              title=f"landmarks (on slices within {common.LANDMARK_SLAB_MM:g} mm)")
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
        _panel(ax, "axial", ct_arr, lab, None, z, ct_a, landmarks, title, _liver_box(lab, spacing))
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
        o_caudate, f, g, dist_b, _ = couinaud.caudate_frame(frame)
        t = np.linspace(0, 2 * np.pi, 100)
        ring = (o_caudate[None] + h * frame.axis[None] + (couinaud.CAUDATE_CENTRE * dist_b + couinaud.CAUDATE_ALONG * dist_b * np.cos(t))[:, None] * f
                + (couinaud.CAUDATE_LEFT * dist_b + couinaud.CAUDATE_ACROSS * dist_b * np.sin(t))[:, None] * g)
        r_idx = _to_index(ct_a, ring)
        ax.plot(r_idx[:, 0], r_idx[:, 1], ":", color="cyan", lw=1)
        _zoom(ax, "axial", _liver_box(lab, spacing), lab.shape)
    ax = axes[0, 2]
    y = int(np.clip(round(_to_index(ct_a, frame.origin)[1] - 15.0 / spacing[1]), 0, lab.shape[1] - 1))
    _panel(ax, "coronal", ct_arr, lab, None, y, ct_a, landmarks, "portal planes (per side), segment I heights",
           _liver_box(lab, spacing))
    for name in ("RPV", "LPV", "IVC", "IVC_inferior"):
        if name in landmarks:
            idx = _to_index(ct_a, landmarks[name])
            row = nz - 1 - idx[2]
            ax.axhline(row, color="white", ls="-" if name in ("RPV", "LPV") else ":", lw=0.8)
            ax.annotate(f"{name} height", (ax.get_xlim()[0] + 2, row - 1), color="yellow", fontsize=7)
    return common.save(fig, path)
