"""Slicer segmentation files (``.seg.nrrd``) written and read without Slicer.

A ``.seg.nrrd`` is a NRRD volume in LPS space whose voxels hold segment label values, plus
``key:=value`` header fields that Slicer's ``vtkMRMLSegmentationStorageNode`` reads back: for each
segment ``Segment{i}_ID``, ``_Name``, ``_Color`` (0..1 RGB), ``_Tags`` (``key:value|`` pairs, among
them ``TerminologyEntry``), ``_Extent`` (voxel bounds in the file's cropped grid), ``_Layer`` and
``_LabelValue``; for the whole file ``Segmentation_ReferenceImageExtentOffset`` (where the cropped
file grid starts in the reference grid) and ``Segmentation_ConversionParameters`` (among them the
reference image geometry, i.e. the CT's grid, in RAS).

Segments that overlap go to different layers (the file's fourth, ``list`` axis); segments that do
not overlap share a layer with different label values, so a file with a liver, its lesions and its
eight Couinaud segments has three layers. The file is cropped to the bounding box of all segments;
the grid's direction (oblique included), spacing and origin are written exactly.

Masks are numpy boolean arrays indexed ``[z, y, x]`` on the reference image's grid (as
``SimpleITK.GetArrayViewFromImage`` gives them); positions are LPS millimetres.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import io, labels
from .errors import InputError

# Terminology contexts of Slicer's Terminologies module (the DICOM master lists hold liver, portal and
# hepatic veins, IVC and neoplasm; the Couinaud segment codes are carried as custom entries)
CATEGORY_TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
TERMINOLOGY_TAG = "TerminologyEntry"
# Tag that marks segments written by LiverLocalization (used by the MRML bridge to find its own segments)
GENERATED_TAG = "LiverLocalization.Generated"
# The SegmentSpec ID a generated segment holds, and a checksum of its voxels when written (detects user edits)
RESULT_ID_TAG = "LiverLocalization.ResultID"
CHECKSUM_TAG = "LiverLocalization.Checksum"

LIVER_REGION = labels.Code("SCT", "10200004", "Liver")

_REFERENCE_GEOMETRY_DESCRIPTION = (
    "Image geometry description string determining the geometry of the labelmap that is created in course of "
    "conversion. Can be copied from a volume, using the button."
)
_LPS_TO_RAS_4 = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class SegmentSpec:
    """One segment to write: an ID (unique in the file), a displayed name, a voxel mask and a style.

    mask: boolean array indexed [z, y, x] on the reference image's grid, or a `LabelMask` (one value of a label
        map, made into an array only when a writer reads it).
    style: colour and terminology (labels.SegmentStyle); its name is not used (the name is `name`).
    tags: extra segment tags (key → value; no '|' in values, no ':' in keys).
    """

    segment_id: str
    name: str
    mask: np.ndarray
    style: labels.SegmentStyle
    tags: dict[str, str] = field(default_factory=dict)


class LabelMask:
    """The voxels of a label map equal to `value` (nonzero ones when `value` is None) as a mask that is made into an
    array only when read (`np.asarray`), [z, y, x] on the label map's grid.

    A result's segments are values of a few label maps (liver, lesions, vessels, Couinaud); as LabelMasks a list of
    twenty segments holds those maps, not twenty full-grid masks (0.65 GB on a 512 x 512 x 129 CT), and a writer
    that reads one segment at a time holds one mask at a time. `labels` is a SimpleITK image, whose voxels are
    viewed here (the image is held, so the view stays valid; reading the mask later runs no SimpleITK call, so
    another thread may read it), or a [z, y, x] array.
    """

    def __init__(self, labels: sitk.Image | np.ndarray, value: int | None = None):
        self._image = labels if isinstance(labels, sitk.Image) else None
        self.label_array = sitk.GetArrayViewFromImage(labels) if self._image is not None else np.asarray(labels)
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.label_array.shape)

    @property
    def ndim(self) -> int:
        return self.label_array.ndim

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        mask = self.label_array != 0 if self.value is None else self.label_array == self.value
        return mask if dtype is None else mask.astype(dtype, copy=False)


# ------------------------------------------------------------------------ terminology

def _code_text(code: labels.Code | None) -> str:
    return "^^" if code is None else f"{code.scheme}^{code.value}^{code.meaning}"


def terminology_entry(style: labels.SegmentStyle, region: labels.Code | None = None) -> str:
    """Slicer's serialized terminology entry for a style.

    Seven '~'-separated fields (category/type context, category, type, type modifier, anatomic context,
    anatomic region, region modifier), each code as 'scheme^value^meaning' ('^^' when absent; the type modifier is
    the style's, e.g. Superior for segment IVa), the way
    vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry writes them.
    """
    return "~".join([
        CATEGORY_TYPE_CONTEXT, _code_text(style.category), _code_text(style.type), _code_text(style.modifier),
        ANATOMIC_CONTEXT, _code_text(region), "^^",
    ])


def parse_terminology_entry(entry: str) -> dict[str, labels.Code | str | None]:
    """Inverse of `terminology_entry`: {'context', 'category', 'type', 'modifier', 'region_context', 'region',
    'region_modifier'} with labels.Code values (None for empty codes). Raises ValueError when malformed."""
    fields = entry.split("~")
    if len(fields) != 7:
        raise ValueError(f"terminology entry has {len(fields)} '~'-separated fields, 7 expected: {entry!r}")

    def code(text: str) -> labels.Code | None:
        parts = text.split("^")
        if len(parts) != 3 or not any(parts):
            return None
        return labels.Code(*parts)

    return {"context": fields[0], "category": code(fields[1]), "type": code(fields[2]), "modifier": code(fields[3]),
            "region_context": fields[4], "region": code(fields[5]), "region_modifier": code(fields[6])}


def default_region(style: labels.SegmentStyle) -> labels.Code | None:
    """Anatomic region of a style: lesions (morphologically altered structures) lie in the liver."""
    return LIVER_REGION if style.category == labels.MORPHOLOGICALLY_ALTERED_STRUCTURE else None


def mask_checksum(mask: np.ndarray) -> str:
    """Short hash of a boolean [z, y, x] mask on the reference grid (shape included)."""
    mask = np.asarray(mask, dtype=bool)
    digest = hashlib.sha1(str(mask.shape).encode())
    digest.update(np.packbits(mask, axis=None).tobytes())
    return digest.hexdigest()[:20]


def segment_tags(spec: SegmentSpec, checksum: str | None = None) -> dict[str, str]:
    """All tags written for a segment: terminology entry, generated-by mark, result ID, voxel checksum (`checksum`
    when the caller has it, else `mask_checksum` of the spec's mask), the spec's own tags."""
    tags = {TERMINOLOGY_TAG: terminology_entry(spec.style, default_region(spec.style)), GENERATED_TAG: "1",
            RESULT_ID_TAG: spec.segment_id, CHECKSUM_TAG: checksum or mask_checksum(spec.mask)}
    tags.update(spec.tags)
    return tags


# ------------------------------------------------------------------------ geometry helpers

def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """4×4 matrix mapping (i, j, k, 1) voxel indices to RAS millimetres (Slicer's IJKToRAS)."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3) * np.asarray(image.GetSpacing(), dtype=float)
    m[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS_4 @ m


def image_geometry_from_ijk_to_ras(matrix: np.ndarray, size_xyz) -> sitk.Image:
    """A uint8 image of the given size whose grid has the IJK-to-RAS matrix (spacing = column norms)."""
    lps = _LPS_TO_RAS_4 @ np.asarray(matrix, dtype=float)
    columns = lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise InputError("The segmentation's geometry has a zero voxel spacing; the file is damaged.")
    image = sitk.Image([int(s) for s in size_xyz], sitk.sitkUInt8)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (columns / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def serialize_image_geometry(image: sitk.Image) -> str:
    """Slicer's 'Reference image geometry' value: 16 IJK-to-RAS numbers then the extent, ';'-terminated."""
    values = [repr(float(v)) if not float(v).is_integer() else str(int(v)) for v in ijk_to_ras_matrix(image).ravel()]
    nx, ny, nz = image.GetSize()
    values += [str(v) for v in (0, nx - 1, 0, ny - 1, 0, nz - 1)]
    return ";".join(values) + ";"


def _parse_image_geometry(text: str) -> sitk.Image | None:
    numbers = [v for v in text.split(";") if v.strip()]
    if len(numbers) != 22:
        return None
    values = [float(v) for v in numbers]
    extent = [int(round(v)) for v in values[16:]]
    size = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    if min(size) < 1 or any(extent[i] != 0 for i in (0, 2, 4)):
        return None
    return image_geometry_from_ijk_to_ras(np.asarray(values[:16]).reshape(4, 4), size)


def _format_float(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(lower, upper) inclusive [z, y, x] bounds of the nonzero voxels, None when empty."""
    if not mask.any():
        return None
    lower, upper = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        lower.append(hit[0])
        upper.append(hit[-1])
    return np.asarray(lower), np.asarray(upper)


# ------------------------------------------------------------------------ writing

def _check_specs(reference: sitk.Image, segments: list[SegmentSpec]) -> None:
    if reference.GetDimension() != 3:
        raise InputError(f"The reference image is {reference.GetDimension()}-D; segmentations are written on a 3-D grid.")
    shape = tuple(reversed(reference.GetSize()))
    seen: set[str] = set()
    for spec in segments:
        if not spec.segment_id or any(c in spec.segment_id for c in "\n|"):
            raise InputError(f"Segment ID {spec.segment_id!r} is empty or contains a newline or '|'.")
        if spec.segment_id in seen:
            raise InputError(f"Segment ID {spec.segment_id!r} appears twice; segment IDs must be unique.")
        seen.add(spec.segment_id)
        if "\n" in spec.name:
            raise InputError(f"Segment name {spec.name!r} contains a newline.")
        if np.shape(spec.mask) != shape:
            raise InputError(
                f"Segment {spec.segment_id!r}: mask shape {np.shape(spec.mask)} differs from the reference grid "
                f"{shape} ([z, y, x]); masks must lie on the reference image's voxel grid.")
        for key, value in spec.tags.items():
            if ":" in key or "|" in key or "|" in str(value) or "\n" in str(value):
                raise InputError(f"Segment {spec.segment_id!r}: tag {key!r} has ':' or '|' in its key, or '|' in its value.")


def _box_slices(lower, upper) -> tuple[slice, ...]:
    """Index slices of the inclusive [z, y, x] box lower..upper."""
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(lower, upper))


def assign_layers(masks: Iterable[np.ndarray]) -> list[tuple[int, int]]:
    """(layer, label value) for each mask (read once, in order): first layer where it overlaps nothing already
    placed, next free label."""
    layers: list[np.ndarray] = []
    counts: list[int] = []
    out = []
    for mask in masks:
        free = [i for i, occupied in enumerate(layers) if not np.logical_and(occupied, mask).any()]
        index = free[0] if free else len(layers)
        if not free:
            layers.append(np.zeros(mask.shape, dtype=bool))
            counts.append(0)
        layers[index] |= mask
        counts[index] += 1
        out.append((index, counts[index]))
    return out


def write_seg_nrrd(path: str | os.PathLike, reference: sitk.Image, segments: list[SegmentSpec],
                   compress: bool = True, crop: bool = True) -> Path:
    """Write segments as a Slicer ``.seg.nrrd`` on the reference image's grid; returns the path.

    reference: the image whose grid the masks lie on (usually the CT); its geometry (LPS origin,
        spacing, direction including oblique) is written exactly and recorded as Slicer's
        reference image geometry.
    segments: in display order; overlapping segments go to separate layers; empty masks are kept
        as empty segments.
    crop: crop the file to the bounding box of all segments (the offset is recorded the way Slicer
        does, and the file origin is shifted so that plain NRRD readers also place it correctly).
    """
    _check_specs(reference, segments)
    path = Path(path)
    shape = tuple(reversed(reference.GetSize()))
    boxes, pieces, checksums = [], [], []  # each mask is read once and kept only inside its own bounding box
    for spec in segments:
        mask = np.asarray(spec.mask, dtype=bool)
        box = _bounding_box(mask)
        boxes.append(box)
        pieces.append(None if box is None else mask[_box_slices(box[0], box[1])].copy())
        checksums.append(mask_checksum(mask))
        del mask
    present = [b for b in boxes if b is not None]
    if not crop:
        lower, upper = np.zeros(3, dtype=int), np.asarray(shape) - 1
    elif present:
        lower = np.min([b[0] for b in present], axis=0)
        upper = np.max([b[1] for b in present], axis=0)
    else:  # nothing to store: a single voxel, as Slicer writes empty segmentations
        lower, upper = np.zeros(3, dtype=int), np.zeros(3, dtype=int)
    crop_shape = tuple(int(hi - lo + 1) for lo, hi in zip(lower, upper))
    in_file = [None if box is None else _box_slices(box[0] - lower, box[1] - lower) for box in boxes]

    def on_crop(index: int) -> np.ndarray:  # segment `index`'s mask on the file's (cropped) grid
        out = np.zeros(crop_shape, dtype=bool)
        if in_file[index] is not None:
            out[in_file[index]] = pieces[index]
        return out

    placement = assign_layers(on_crop(i) for i in range(len(segments)))
    n_layers = max([layer for layer, _ in placement], default=0) + 1
    max_label = max([value for _, value in placement], default=1)
    dtype = np.uint8 if max_label <= 255 else np.uint16
    data = np.zeros(crop_shape + (n_layers,) if segments else (1, 1, 1, 1), dtype=dtype)
    for index, (layer, value) in enumerate(placement):
        if in_file[index] is not None:
            data[..., layer][in_file[index]][pieces[index]] = value

    # geometry of the cropped grid (offset in x, y, z order)
    offset_xyz = lower[::-1].astype(int)
    m = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3) * np.asarray(reference.GetSpacing(), dtype=float)
    origin = np.asarray(reference.GetOrigin(), dtype=float) + m @ offset_xyz
    directions = " ".join("(" + ",".join(_format_float(v) for v in m[:, axis]) + ")" for axis in range(3))
    sizes = list(reversed(data.shape[:3]))

    fields: dict[str, str] = {}
    for index, (spec, box, (layer, value)) in enumerate(zip(segments, boxes, placement)):
        if box is None:
            extent = "0 -1 0 -1 0 -1"
        else:
            # extents are relative to the file's (cropped) voxel buffer, as Slicer writes them
            lo, hi = box[0][::-1] - offset_xyz, box[1][::-1] - offset_xyz
            extent = " ".join(f"{int(a)} {int(b)}" for a, b in zip(lo, hi))
        color = " ".join(_format_float(round(float(c), 6)) for c in spec.style.color)
        prefix = f"Segment{index}_"
        fields[prefix + "Color"] = color
        fields[prefix + "ColorAutoGenerated"] = "0"
        fields[prefix + "Extent"] = extent
        fields[prefix + "ID"] = spec.segment_id
        fields[prefix + "LabelValue"] = str(value)
        fields[prefix + "Layer"] = str(layer)
        fields[prefix + "Name"] = spec.name
        fields[prefix + "NameAutoGenerated"] = "0"
        fields[prefix + "Tags"] = "".join(f"{k}:{v}|" for k, v in sorted(segment_tags(spec, checksums[index]).items()))
    fields["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    fields["Segmentation_ConversionParameters"] = (
        f"Reference image geometry|{serialize_image_geometry(reference)}|{_REFERENCE_GEOMETRY_DESCRIPTION}")
    fields["Segmentation_MasterRepresentation"] = "Binary labelmap"
    fields["Segmentation_ReferenceImageExtentOffset"] = " ".join(str(int(v)) for v in offset_xyz)

    type_name = "unsigned char" if dtype == np.uint8 else "unsigned short"
    header = ["NRRD0004", "# Complete NRRD file format specification at:", "# http://teem.sourceforge.net/nrrd/format.html",
              f"type: {type_name}"]
    if n_layers > 1:
        header += ["dimension: 4", "space: left-posterior-superior", f"sizes: {n_layers} {' '.join(map(str, sizes))}",
                   f"space directions: none {directions}", "kinds: list domain domain domain"]
    else:
        header += ["dimension: 3", "space: left-posterior-superior", f"sizes: {' '.join(map(str, sizes))}",
                   f"space directions: {directions}", "kinds: domain domain domain"]
    if dtype != np.uint8:
        header.append("endian: little")
    header += [f"encoding: {'gzip' if compress else 'raw'}",
               "space origin: (" + ",".join(_format_float(v) for v in origin) + ")"]
    header += [f"{key}:={value}" for key, value in fields.items()]
    payload = np.ascontiguousarray(data if n_layers > 1 else data[..., 0]).astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes()
    if compress:
        payload = gzip.compress(payload, compresslevel=6)  # zlib default: half the size of level 1 for 0.1 s more on a full CT
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(("\n".join(header) + "\n\n").encode("utf-8"))
        handle.write(payload)
    return path


# ------------------------------------------------------------------------ reading

def _meta(image: sitk.Image, key: str, default: str | None = None) -> str | None:
    return image.GetMetaData(key) if image.HasMetaDataKey(key) else default


def _parse_tags(text: str) -> dict[str, str]:
    tags = {}
    for item in text.split("|"):
        if ":" in item:
            key, value = item.split(":", 1)
            tags[key] = value
    return tags


def read_seg_nrrd(path: str | os.PathLike) -> tuple[sitk.Image, list[dict]]:
    """Read a ``.seg.nrrd`` (ours or Slicer's): (grid image, segments).

    The grid image is a uint8 image of zeros carrying the geometry the masks lie on: the reference
    image geometry recorded in the file (Slicer's 'Reference image geometry', i.e. the CT the
    segmentation was made on) when the file grid is a crop of it, else the file's own grid.
    Each segment is a dict {'id', 'name', 'color' (r, g, b 0..1), 'tags' (dict), 'terminology'
    (parse_terminology_entry's dict or None), 'layer', 'label_value', 'mask' (bool [z, y, x] on the grid)}.
    A plain label-map NRRD (no segment fields) gives one segment per label value.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such segmentation file.")
    try:
        with io.quiet_native_stderr():
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot be read as a NRRD segmentation ({io.itk_reason(exc)}).") from None
    if image.GetDimension() != 3:
        raise InputError(f"{path}: a {image.GetDimension()}-D image; a segmentation is 3-D with optional layers.")
    data = sitk.GetArrayFromImage(image)
    if data.ndim == 3:
        data = data[..., None]

    offset = [0, 0, 0]
    text = _meta(image, "Segmentation_ReferenceImageExtentOffset")
    if text:
        offset = [int(v) for v in text.split()[:3]]
    m = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3) * np.asarray(image.GetSpacing(), dtype=float)
    start = np.asarray(offset, dtype=int)
    reference = None
    params = _meta(image, "Segmentation_ConversionParameters", "") or ""
    for item in params.split("&"):
        parts = item.split("|")
        if len(parts) >= 2 and parts[0] == "Reference image geometry":
            reference = _parse_image_geometry(parts[1])
    if reference is not None:
        ref_m = np.asarray(reference.GetDirection()).reshape(3, 3) * np.asarray(reference.GetSpacing())
        expected_origin = np.asarray(reference.GetOrigin()) + ref_m @ start
        fits = (np.allclose(ref_m, m, atol=1e-4) and np.allclose(expected_origin, image.GetOrigin(), atol=1e-3)
                and all(0 <= s and s + n <= N for s, n, N in zip(start, image.GetSize(), reference.GetSize())))
        if fits:
            grid = reference
        else:
            reference = None
    if reference is None:
        start = np.zeros(3, dtype=int)
        grid = image_geometry_from_ijk_to_ras(ijk_to_ras_matrix(image), image.GetSize())
    shape = tuple(reversed(grid.GetSize()))
    place = tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start[::-1], data.shape[:3]))

    segments = []
    index = 0
    while image.HasMetaDataKey(f"Segment{index}_ID"):
        prefix = f"Segment{index}_"
        layer = int(_meta(image, prefix + "Layer", str(index)))
        value = int(_meta(image, prefix + "LabelValue", "1"))
        if layer >= data.shape[3]:
            raise InputError(f"{path}: segment {index} is in layer {layer} but the file has {data.shape[3]} layer(s).")
        mask = np.zeros(shape, dtype=bool)
        mask[place] = data[..., layer] == value
        color_text = _meta(image, prefix + "Color", "0.5 0.5 0.5").split()
        tags = _parse_tags(_meta(image, prefix + "Tags", "") or "")
        try:
            terminology = parse_terminology_entry(tags[TERMINOLOGY_TAG]) if TERMINOLOGY_TAG in tags else None
        except ValueError:
            terminology = None
        segments.append({
            "id": _meta(image, prefix + "ID"), "name": _meta(image, prefix + "Name", ""),
            "color": tuple(float(c) for c in color_text[:3]), "tags": tags, "terminology": terminology,
            "layer": layer, "label_value": value, "mask": mask,
        })
        index += 1
    if not segments:  # a plain label map
        for layer in range(data.shape[3]):
            for value in np.unique(data[..., layer]):
                if value == 0:
                    continue
                mask = np.zeros(shape, dtype=bool)
                mask[place] = data[..., layer] == value
                segments.append({"id": f"Label_{int(value)}", "name": f"Label {int(value)}", "color": (0.5, 0.5, 0.5),
                                 "tags": {}, "terminology": None, "layer": layer, "label_value": int(value), "mask": mask})
    return grid, segments


def read_seg_nrrd_as_labelmap(path: str | os.PathLike, segment_ids: list[str] | None = None) -> sitk.Image:
    """A uint16 label map on the file's grid: value k+1 where segment k of `segment_ids` (default: all, in
    file order) is set; later segments win where they overlap."""
    grid, segments = read_seg_nrrd(path)
    wanted = segment_ids if segment_ids is not None else [s["id"] for s in segments]
    by_id = {s["id"]: s for s in segments}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise InputError(f"{path}: no segment with ID {', '.join(missing)} (present: {', '.join(by_id)}).")
    out = np.zeros(tuple(reversed(grid.GetSize())), dtype=np.uint16)
    for value, segment_id in enumerate(wanted, start=1):
        out[by_id[segment_id]["mask"]] = value
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(grid)
    return image
