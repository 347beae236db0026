"""Physical geometry helpers: LPS/RAS, points and indices, voxel volume, image checks.

The library's world coordinates are LPS millimetres (ITK/SimpleITK); RAS only at the boundaries.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras(point) -> np.ndarray:
    """Convert a point (or an (n, 3) array of points) from LPS to RAS millimetres (and back: it is its own inverse)."""
    return np.asarray(point, dtype=float) * np.array([-1.0, -1.0, 1.0])


ras_to_lps = lps_to_ras


def direction_matrix(image: sitk.Image) -> np.ndarray:
    """The image's 3×3 direction cosine matrix (columns = index axes in LPS)."""
    return np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in millilitres."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def index_to_lps(image: sitk.Image, index_xyz) -> np.ndarray:
    """Continuous (x, y, z) indices, shape (3,) or (n, 3), to LPS mm."""
    idx = np.asarray(index_xyz, dtype=float)
    m = direction_matrix(image) * np.asarray(image.GetSpacing(), dtype=float)[None, :]
    return idx @ m.T + np.asarray(image.GetOrigin(), dtype=float)


def lps_to_index(image: sitk.Image, point_lps) -> np.ndarray:
    """LPS mm, shape (3,) or (n, 3), to continuous (x, y, z) indices."""
    p = np.asarray(point_lps, dtype=float) - np.asarray(image.GetOrigin(), dtype=float)
    m = direction_matrix(image) * np.asarray(image.GetSpacing(), dtype=float)[None, :]
    return p @ np.linalg.inv(m).T


def voxel_centers_lps(image: sitk.Image, zyx_indices: np.ndarray) -> np.ndarray:
    """LPS mm of voxel centres given as an (n, 3) array of [z, y, x] array indices (numpy order)."""
    return index_to_lps(image, np.asarray(zyx_indices, dtype=float)[:, ::-1])


def physical_grid_lps(image: sitk.Image, dtype=np.float32) -> np.ndarray:
    """LPS coordinates of every voxel centre, shape (nz, ny, nx, 3). Memory: 12 bytes per voxel."""
    nx, ny, nz = image.GetSize()
    m = direction_matrix(image) * np.asarray(image.GetSpacing(), dtype=float)[None, :]
    origin = np.asarray(image.GetOrigin(), dtype=float)
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    out = np.empty((nz, ny, nx, 3), dtype=dtype)
    for axis in range(3):
        out[..., axis] = origin[axis] + m[axis, 0] * i + m[axis, 1] * j + m[axis, 2] * k
    return out


def ball_structure(radius_mm: float, spacing_zyx) -> np.ndarray:
    """A boolean ball of the given radius in mm as a structuring element on a [z, y, x] voxel grid."""
    r = np.maximum(0, np.floor(radius_mm / np.asarray(spacing_zyx, dtype=float) + 1e-6)).astype(int)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    sz, sy, sx = spacing_zyx
    return (zz * sz) ** 2 + (yy * sy) ** 2 + (xx * sx) ** 2 <= radius_mm ** 2 + 1e-6


def zip_equal(*iterables):
    """`zip(*iterables, strict=True)` on Python 3.9 too (Slicer 5.6-5.8): the same tuples, and a ValueError when one
    iterable ends before the others."""
    missing = object()
    for values in itertools.zip_longest(*iterables, fillvalue=missing):
        if any(v is missing for v in values):
            raise ValueError("zip_equal: the iterables have different lengths")
        yield values


def widen(sl: tuple[slice, ...], margin, shape) -> tuple[slice, ...]:
    """Index slices `sl` (e.g. from `ndimage.find_objects`) widened by `margin` voxels (one int, or one per axis),
    clipped to an array of `shape`."""
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (len(sl),))
    return tuple(slice(max(0, s.start - int(m)), min(int(n), s.stop + int(m)))
                 for s, m, n in zip_equal(sl, margins, shape))


def depth_mm(region: np.ndarray, spacing_zyx) -> np.ndarray:
    """Euclidean distance (mm, float32) from each voxel of the bool array `region` to the nearest voxel outside it
    (0 outside), per-axis spacing honoured: the values of scipy's `distance_transform_edt(region, sampling=...)`,
    computed by SimpleITK's multi-threaded Maurer transform of the complement (about 5x faster on a real liver:
    0.3 vs 1.7 s). A region without any voxel outside it gets +inf everywhere."""
    region = np.asarray(region, dtype=bool)
    if region.all():
        return np.full(region.shape, np.inf, np.float32)
    box = bounding_box(region, 1)
    if box is None:
        return np.zeros(region.shape, np.float32)
    if any(s.stop - s.start < n for s, n in zip(box, region.shape)):
        # the box round the region, one voxel wider, is outside it on every face: the nearest outside voxel of
        # every region voxel lies in it (clamping an outside voxel to the box brings it no farther), so the
        # distances computed on the box are exact
        out = np.zeros(region.shape, np.float32)
        out[box] = depth_mm(region[box], spacing_zyx)
        return out
    outside = sitk.GetImageFromArray((~region).view(np.uint8))
    outside.SetSpacing(tuple(float(v) for v in np.asarray(spacing_zyx, dtype=float)[::-1]))
    dist = sitk.SignedMaurerDistanceMap(outside, insideIsPositive=False, squaredDistance=False, useImageSpacing=True,
                                        backgroundValue=0)
    return np.maximum(sitk.GetArrayFromImage(dist), np.float32(0))


def bounding_box(mask: np.ndarray, margin_voxels=0) -> tuple[slice, ...] | None:
    """The slices of the smallest box holding every True voxel of `mask`, widened by `margin_voxels` (one number
    or one per axis) and clipped to the array; None when `mask` is empty."""
    mask = np.asarray(mask, dtype=bool)
    margins = np.broadcast_to(np.asarray(margin_voxels, dtype=int), (mask.ndim,))
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(max(0, int(hit[0]) - int(margins[axis])),
                         min(mask.shape[axis], int(hit[-1]) + 1 + int(margins[axis]))))
    return tuple(box)


def distance_to_mm(mask: np.ndarray, spacing_zyx, limit_mm: float) -> np.ndarray:
    """Euclidean distance (mm, float32) from each voxel to the nearest True voxel of `mask` where it is at most
    `limit_mm`, +inf where it is more: `depth_mm(~mask)` on the box round `mask` widened by the limit (the nearest
    mask voxel of any voxel lies in the mask's own box), so the cost follows the mask's size, not the array's."""
    mask = np.asarray(mask, dtype=bool)
    out = np.full(mask.shape, np.inf, np.float32)
    sp = np.asarray(spacing_zyx, dtype=float)
    box = bounding_box(mask, np.ceil(limit_mm / sp).astype(int) + 1)
    if box is None:
        return out
    near = depth_mm(~mask[box], sp)
    out[box] = np.where(near <= limit_mm, near, np.float32(np.inf))
    return out


def dilate_mm(mask: np.ndarray, radius_mm: float, spacing_zyx) -> np.ndarray:
    """Dilation of the bool array `mask` by a ball of `radius_mm` (mm, per-axis spacing honoured): the same voxels
    as scipy's `binary_dilation` with `ball_structure(radius_mm, spacing_zyx)`, by one distance transform on the
    box round the mask (`distance_to_mm`), whose cost does not grow with the ball (15 mm on a 2.3 mm grid: 0.06
    vs 0.49 s)."""
    return distance_to_mm(mask, spacing_zyx, radius_mm + _BALL_TOLERANCE_MM) <= radius_mm + _BALL_TOLERANCE_MM


def close_mm(mask: np.ndarray, radius_mm: float, spacing_zyx) -> np.ndarray:
    """Closing of `mask` by a ball of `radius_mm`, the array's outside counted as background of the mask (not as
    background of the closing: the result holds every voxel of `mask`, also at the array's faces). The same
    voxels as scipy's `binary_closing` with `ball_structure` on the mask padded by the ball's radius, by two
    distance transforms (`depth_mm`)."""
    sp = np.asarray(spacing_zyx, dtype=float)
    pad = [(int(np.ceil(radius_mm / s)) + 1,) * 2 for s in sp]
    grown = dilate_mm(np.pad(np.asarray(mask, dtype=bool), pad), radius_mm, sp)
    closed = depth_mm(grown, sp) > radius_mm + _BALL_TOLERANCE_MM
    return closed[tuple(slice(p[0], closed.shape[i] - p[1]) for i, p in enumerate(pad))]


def open_mm(mask: np.ndarray, radius_mm: float, spacing_zyx) -> np.ndarray:
    """Opening of `mask` by a ball of `radius_mm`: the union of the balls of that radius that fit inside it (the
    parts at least that thick), by two distance transforms (`depth_mm`, `dilate_mm`) whose cost does not grow
    with the ball. The array's outside counts as inside the mask (a region cut by the array's faces goes on)."""
    sp = np.asarray(spacing_zyx, dtype=float)
    centres = depth_mm(mask, sp) > radius_mm + _BALL_TOLERANCE_MM
    return dilate_mm(centres, radius_mm, sp) & np.asarray(mask, dtype=bool)


def fill_enclosed(mask: np.ndarray, structure: np.ndarray | None = None, axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """`mask` (bool) plus its background components (connectivity `structure`; None: face neighbours) that touch
    no face of the array along `axes`: with the defaults, scipy's `binary_fill_holes`, by labelling the
    background once instead of flooding it iteratively."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    lab, n = ndimage.label(~mask, structure=structure)
    if n == 0:
        return mask.copy()
    open_ids = np.zeros(n + 1, bool)
    for ax in axes:
        for index in (0, -1):
            open_ids[np.take(lab, index, axis=ax)] = True
    open_ids[0] = True
    return mask | ~open_ids[lab]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill 3-D holes, then 2-D holes in every axial slice (index z) — cavities open above or below a slice too.

    Same result as scipy's `binary_fill_holes` on the volume and then on each slice (face-connected
    background), by labelling the background once per pass instead of flooding it iteratively (about 10×
    faster on a full-resolution liver).
    """
    from scipy import ndimage

    out = fill_enclosed(mask)
    in_slice = np.zeros((3, 3, 3), bool)
    in_slice[1] = ndimage.generate_binary_structure(2, 1)
    return fill_enclosed(out, in_slice, axes=(1, 2))


def shell_fraction(region: np.ndarray, other: np.ndarray) -> float:
    """Share of a region's one-voxel shell (the voxels face-adjacent to it, outside it) that lies in `other`
    (bool arrays of one shape; 0 when the region has no shell in the array)."""
    from scipy import ndimage

    shell = ndimage.binary_dilation(region, structure=ndimage.generate_binary_structure(3, 1)) & ~region
    return float((shell & other).sum() / max(1, shell.sum()))


def components_with_shell_in(region: np.ndarray, other: np.ndarray, min_fraction: float,
                             structure: np.ndarray | None = None) -> np.ndarray:
    """Union of the connected components of `region` (connectivity `structure`; None: face neighbours) at least
    `min_fraction` of whose one-voxel shell lies in `other` (`shell_fraction`); bool arrays of one shape."""
    from scipy import ndimage

    lab, n = ndimage.label(region, structure=structure)
    out = np.zeros(region.shape, bool)
    for i, sl in enumerate(ndimage.find_objects(lab) if n else [], start=1):
        sl = widen(sl, 1, lab.shape)
        comp = lab[sl] == i
        if shell_fraction(comp, other[sl]) >= min_fraction:
            out[sl] |= comp
    return out


def nearest_direction(offsets_mm: np.ndarray) -> np.ndarray:
    """Index 0..25 of the nearest of the 26 directions of a voxel's neighbourhood (faces, edges, corners) for each
    offset (rows of [z, y, x] mm): the sectors in which `ring_closure` looks round a region."""
    dirs = np.array([d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)], dtype=float) - 1.0
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return np.argmax(np.asarray(offsets_mm, dtype=float) @ dirs.T, axis=1)


def ring_closure(values: np.ndarray, shell: np.ndarray, region: np.ndarray, spacing_zyx, level: float,
                 min_voxels: int = 5) -> float:
    """Fraction of the directions round `region` in which the voxels of `shell` average at least `level`.

    Directions: the 26 of a voxel's neighbourhood, seen from the region's centroid (mm, anisotropic spacing
    honoured); each shell voxel counts for the nearest one; directions with fewer than `min_voxels` shell
    voxels are left out. 0 when no direction has enough voxels."""
    from scipy import ndimage

    sp = np.asarray(spacing_zyx, dtype=float)
    centre = np.asarray(ndimage.center_of_mass(region)) * sp
    offsets = np.argwhere(shell) * sp - centre
    if offsets.shape[0] == 0:
        return 0.0
    nearest = nearest_direction(offsets)
    counts = np.bincount(nearest, minlength=26)
    sums = np.bincount(nearest, weights=values[shell], minlength=26)
    used = counts >= min_voxels
    if not used.any():
        return 0.0
    return float(np.mean(sums[used] / counts[used] >= level))


_BALL_TOLERANCE_MM = 1e-4  # distances equal to the radius (up to float32 rounding) lie on the ball


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within tolerance in mm)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def require_same_geometry(image: sitk.Image, reference: sitk.Image, what: str) -> None:
    """Raise InputError when `image` (called `what`) does not share `reference`'s voxel grid."""
    if not same_geometry(image, reference):
        raise InputError(
            f"{what} does not have the CT's geometry (size {image.GetSize()} vs {reference.GetSize()}, "
            f"spacing {tuple(round(s, 3) for s in image.GetSpacing())} vs "
            f"{tuple(round(s, 3) for s in reference.GetSpacing())}, origin or direction differ). "
            "Resample it onto the CT first (e.g. Slicer's Resample Scalar/Vector/DWI Volume, or export the "
            "segmentation with the CT as reference geometry)."
        )


def copy_geometry(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A SimpleITK image from a [z, y, x] array with the reference image's geometry."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def resample_to_spacing(image: sitk.Image, spacing_mm, interpolator=sitk.sitkLinear, default_value: float = 0.0) -> sitk.Image:
    """Resample onto a grid of the given spacing covering the same physical extent and direction."""
    spacing_mm = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    old_spacing = np.asarray(image.GetSpacing(), dtype=float)
    old_size = np.asarray(image.GetSize(), dtype=float)
    new_size = np.maximum(1, np.round(old_size * old_spacing / spacing_mm)).astype(int)
    # keep the physical extent centred: first voxel centre shifts by half the spacing change
    shift = (spacing_mm - old_spacing) / 2.0
    origin = np.asarray(image.GetOrigin()) + direction_matrix(image) @ shift
    return sitk.Resample(
        image, [int(s) for s in new_size], sitk.Transform(), interpolator, tuple(origin),
        tuple(float(s) for s in spacing_mm), image.GetDirection(), default_value, image.GetPixelID(),
    )


@dataclass(frozen=True)
class StorageOrder:
    """How an image's index axes map onto the canonical storage order (index axes as near L, P, S as they come).

    axes[j]: the image's index axis (0 = i, 1 = j, 2 = k) that becomes canonical axis j; flipped[a]: whether
    image axis a runs against the physical axis it is nearest to. `identity` when the image is already stored
    in canonical order (an LPS-ordered DICOM series: nothing to do).
    """

    axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]

    @property
    def identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flipped)

    @property
    def flip_axes(self) -> tuple[int, ...]:
        """The image's index axes (0 = i, 1 = j, 2 = k) that run against their physical axis."""
        return tuple(a for a in range(3) if self.flipped[a])


def storage_order(image: sitk.Image) -> StorageOrder:
    """The permutation and flips that put `image`'s index axes in canonical order (see `StorageOrder`).

    Each index axis goes to the physical (LPS) axis it is nearest to, the assignment that maximises the summed
    |cosines| (ties go to the first permutation, so the choice is deterministic for 45° obliques too).
    """
    d = direction_matrix(image)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[a], a]) for a in range(3)))
    axes = tuple(best.index(j) for j in range(3))
    flipped = tuple(bool(d[best[a], a] < 0) for a in range(3))
    return StorageOrder(axes, flipped)  # type: ignore[arg-type]


def to_canonical_storage(image: sitk.Image, order: StorageOrder | None = None) -> sitk.Image:
    """The same voxels stored in canonical order: index axes as near L, P, S as they come, increasing.

    Every voxel keeps its physical position and value (a permutation and reversal of the array, with spacing,
    origin and direction to match). Algorithms whose result depends on the storage order (block averages that
    drop the remainder at the end of an axis, ties broken in scan order) then give the same voxels whether a
    scan is stored LPS (DICOM), RAS (many NIfTI files) or in any other axis order. `from_canonical_storage`
    maps results back exactly.
    """
    order = order or storage_order(image)
    if order.identity:
        return image
    arr = sitk.GetArrayViewFromImage(image).T  # index order i, j, k
    if order.flip_axes:
        arr = np.flip(arr, axis=order.flip_axes)
    canonical = np.ascontiguousarray(arr.transpose(order.axes).T)
    out = sitk.GetImageFromArray(canonical, isVector=False)
    size, spacing, d = image.GetSize(), image.GetSpacing(), direction_matrix(image)
    first = [size[a] - 1 if order.flipped[a] else 0 for a in range(3)]
    out.SetOrigin(image.TransformIndexToPhysicalPoint(first))
    out.SetSpacing([spacing[a] for a in order.axes])
    cols = [d[:, a] * (-1.0 if order.flipped[a] else 1.0) for a in order.axes]
    out.SetDirection(np.column_stack(cols).ravel().tolist())
    return out


def from_canonical_storage(canonical: sitk.Image, reference: sitk.Image, order: StorageOrder | None = None) -> sitk.Image:
    """Map an image on `to_canonical_storage(reference)`'s grid back onto `reference`'s grid: the inverse
    permutation and reversal of the array, with `reference`'s geometry copied exactly."""
    order = order or storage_order(reference)
    if order.identity:
        return canonical
    arr = sitk.GetArrayViewFromImage(canonical).T  # canonical index order
    arr = arr.transpose(np.argsort(order.axes))  # back to the reference's i, j, k
    if order.flip_axes:
        arr = np.flip(arr, axis=order.flip_axes)
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))
    out.CopyInformation(reference)
    return out
