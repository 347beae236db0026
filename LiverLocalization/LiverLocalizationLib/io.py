"""Reading and writing images and Slicer markups, with geometry kept exactly.

Images: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and DICOM series folders,
all through SimpleITK. Markups: Slicer's ``.mrk.json`` (schema v1.0.x), honouring the file's
``coordinateSystem`` (LPS or RAS); landmarks in memory are LPS millimetres.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import lps_to_ras, ras_to_lps

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3-D image file or a DICOM series folder; the geometry is kept as stored.

    A folder is read as the DICOM series it holds (the one with most slices when there are several).
    Raises InputError when the path is missing or unreadable, when a file is cut short or corrupt (checked on the
    file's own bytes: ITK reads a short NIfTI with the missing voxels as 0), when voxels are NaN or infinite
    (counted on the file's bytes for NIfTI, whose reader turns them into 0), and when the grid is sheared (a
    non-orthonormal direction matrix, which ITK keeps in NRRD/MetaImage and replaces by the qform in NIfTI).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder. Check the path.")
    if path.is_dir():
        image = _read_dicom_folder(path)
    else:
        check_file_integrity(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            if "bytes but received" in first or "not read completely" in first:
                raise InputError(f"{path}: the file is cut short or corrupt ({first}). {COPY_AGAIN}") from None
            raise InputError(
                f"{path}: cannot be read as an image ({first}). Use NIfTI (.nii.gz), NRRD (.nrrd), "
                "MetaImage (.mha) or a folder of DICOM files."
            ) from None
    _check_orthonormal(np.reshape(image.GetDirection(), (image.GetDimension(),) * 2), path)
    if image.GetPixelID() in _FLOAT_PIXELS:
        values = sitk.GetArrayViewFromImage(image)
        _check_finite(path, int(np.isnan(values).sum()), int(np.isinf(values).sum()), values.size)
    return image


# ------------------------------------------------------------------------ file integrity

COPY_AGAIN = "Copy, download or export it again."
ORTHONORMAL_TOLERANCE = 1e-3  # largest |D^T D - I| entry of a direction matrix (float32 headers reach ~1e-7)
_CHUNK = 1 << 22
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_FLOAT_PIXELS = (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64)
_NIFTI_FLOAT_CODES = {16: "f4", 32: "f4", 64: "f8", 1792: "f8"}  # float32, complex64, float64, complex128


def check_file_integrity(path: str | os.PathLike) -> None:
    """Check an image file's own bytes before ITK reads it; raises InputError naming the file.

    NIfTI (.nii, .nii.gz): a gzip stream that ends early or fails its checksum, fewer voxel bytes than the
    header describes, NaN/inf voxels, a sheared sform. NRRD with attached raw or gzip data and MetaImage with
    local raw or zlib data: a stream that ends early or is corrupt, fewer voxel bytes than the header describes.
    Other files (and detached data) are left to ITK.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif name.endswith(".nrrd"):
        _check_nrrd(path)
    elif name.endswith(".mha"):
        _check_metaimage(path)


def _cut_short(path: Path, detail: str) -> InputError:
    """The error for a file whose data end early (`detail` says how it shows)."""
    return InputError(f"{path}: the file is cut short ({detail}); an interrupted copy, download or save? {COPY_AGAIN}")


def _payload_chunks(stream, path: Path, wbits: int | None) -> Iterator[bytes]:
    """The bytes of an open file from its position on, inflated when `wbits` names a gzip or zlib stream.

    Raises InputError when the compressed stream ends before its end marker or fails its checks (zlib verifies
    the gzip trailer's CRC-32 and length). Output comes in bounded chunks, so a highly compressed file never
    has to fit in memory; gzip members that follow one another (bgzip, pigz) are read as one stream.
    """
    if wbits is None:
        while block := stream.read(_CHUNK):
            yield block
        return
    inflater = zlib.decompressobj(wbits)
    while block := stream.read(_CHUNK):
        data = block
        while data:
            try:
                out = inflater.decompress(data, _CHUNK)
            except zlib.error as exc:
                raise InputError(f"{path}: the file is corrupt (its compressed data fail to decompress: {exc}). "
                                 f"{COPY_AGAIN}") from None
            if out:
                yield out
            data = inflater.unconsumed_tail
            if inflater.eof:
                rest = inflater.unused_data
                if wbits != _GZIP_WBITS or not rest.startswith(b"\x1f\x8b"):
                    return  # trailing padding after the stream is ignored, as gzip does
                inflater, data = zlib.decompressobj(wbits), rest
    tail = inflater.flush()
    if tail:
        yield tail
    if not inflater.eof:
        raise _cut_short(path, "the compressed data end before the end-of-stream marker")


def _open_payload(path: Path, offset: int = 0, wbits: int | None = None):
    """The file opened at `offset` and its chunk iterator; gzip is recognised by its magic bytes, not the name."""
    stream = path.open("rb")
    stream.seek(offset)
    if wbits is None and stream.read(2) == b"\x1f\x8b":
        wbits = _GZIP_WBITS
    stream.seek(offset)
    return stream, _payload_chunks(stream, path, wbits)


def _count_bytes_and_nonfinite(chunks: Iterable[bytes], start: int, stop: int, dtype: np.dtype | None
                               ) -> tuple[int, int, int]:
    """(total bytes, NaN values, infinite values) of a byte stream; values of `dtype` between byte offsets
    start and stop are counted (none when dtype is None), whatever the chunk boundaries."""
    total, nans, infs, carry = 0, 0, 0, b""
    for chunk in chunks:
        lo, hi = max(start - total, 0), min(stop - total, len(chunk))
        total += len(chunk)
        if dtype is None or lo >= hi:
            continue
        data = carry + chunk[lo:hi]
        whole = len(data) - len(data) % dtype.itemsize
        values = np.frombuffer(data, dtype, whole // dtype.itemsize)
        nans += int(np.count_nonzero(np.isnan(values)))
        infs += int(np.count_nonzero(np.isinf(values)))
        carry = data[whole:]
    return total, nans, infs


def nifti_header(head: bytes) -> dict | None:
    """The fields of a NIfTI-1 or NIfTI-2 single-file header that the checks need; None when `head` is not one.

    Keys: data_offset, data_bytes (voxels × bytes per voxel), values (voxel count), dtype (numpy dtype of the
    float/complex components, else None), sform_code, sform (3 × 3 linear part of srow_x/y/z).
    """
    for endian in "<>":
        size = struct.unpack_from(endian + "i", head, 0)[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348 and head[344:347] == b"n+1":
            dims = struct.unpack_from(endian + "8h", head, 40)
            datatype, bitpix = struct.unpack_from(endian + "2h", head, 70)
            offset, minimum = struct.unpack_from(endian + "f", head, 108)[0], 352
            sform_code = struct.unpack_from(endian + "h", head, 254)[0]
            srow = struct.unpack_from(endian + "12f", head, 280)
        elif size == 540 and len(head) >= 540 and head[4:7] == b"n+2":
            datatype, bitpix = struct.unpack_from(endian + "2h", head, 12)
            dims = struct.unpack_from(endian + "8q", head, 16)
            offset, minimum = struct.unpack_from(endian + "q", head, 168)[0], 544
            sform_code = struct.unpack_from(endian + "i", head, 348)[0]
            srow = struct.unpack_from(endian + "12d", head, 400)
        else:
            continue
        n = dims[0]
        if not 1 <= n <= 7 or min(dims[1:n + 1]) < 1 or bitpix <= 0 or not np.isfinite(offset):
            return None
        values = int(np.prod(dims[1:n + 1], dtype=np.int64))
        code = _NIFTI_FLOAT_CODES.get(datatype)
        return {
            "data_offset": max(int(offset), minimum), "data_bytes": values * bitpix // 8,
            "values": values * (2 if datatype in (32, 1792) else 1),
            "dtype": np.dtype(endian + code) if code else None,
            "sform_code": int(sform_code), "sform": np.reshape(srow, (3, 4))[:, :3].astype(float),
        }
    return None


def _check_nifti(path: Path) -> None:
    """Read a NIfTI file's bytes once: its sform's shape, its voxel bytes against the header, its NaN/inf voxels
    (ITK's reader turns them into 0, so they are counted here or never)."""
    stream, chunks = _open_payload(path)
    with stream:
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= 544:
                break
        header = nifti_header(head)
        if header is None:
            return  # not a single-file NIfTI: ITK says what it is
        norms = np.linalg.norm(header["sform"], axis=0)
        if header["sform_code"] > 0 and np.all(norms > 0):  # a degenerate sform is left to ITK (it uses the qform)
            _check_orthonormal(header["sform"] / norms, path, "the header's sform")
        start = header["data_offset"]
        stop = start + header["data_bytes"]
        total, nans, infs = _count_bytes_and_nonfinite(itertools.chain([head], chunks), start, stop, header["dtype"])
    if total < stop:
        raise _cut_short(path, f"the header describes {header['data_bytes']} bytes of voxel data, the file holds "
                               f"{max(total - start, 0)}")
    _check_finite(path, nans, infs, header["values"])


def _nrrd_header(path: Path) -> tuple[str, int] | None:
    """The header text of a NRRD file and the offset of its attached data (after the first blank line); None when
    the file is not NRRD or its header ends with CRLF lines (left to ITK)."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    at, crlf = head.find(b"\n\n"), head.find(b"\r\n\r\n")
    if not head.startswith(b"NRRD") or at < 0 or 0 <= crlf < at or b"\0" in head[:at]:
        return None
    return head[:at].decode("latin-1"), at + 2


def _nrrd_type_bytes(name: str) -> int | None:
    """Bytes per value of a NRRD 'type' field in any of its spellings (short, int16_t, unsigned short int, …)."""
    name = name.lower().replace("_t", "")
    for size, words in ((1, ("char", "int8")), (2, ("short", "int16")), (8, ("long long", "longlong", "int64", "double")),
                        (4, ("int", "float"))):
        if any(w in name for w in words):
            return size
    return None


def _check_nrrd(path: Path) -> None:
    """Check the attached raw or gzip data of a NRRD file against its 'sizes' and 'type' (other layouts: ITK)."""
    found = _nrrd_header(path)
    if found is None:
        return
    text, offset = found
    fields = {}
    for line in text.splitlines()[1:]:
        if ":" in line and not line.startswith("#") and ":=" not in line:
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
    encoding = fields.get("encoding", "").lower()
    size = _nrrd_type_bytes(fields.get("type", ""))
    simple = fields.get("line skip", "0") == "0" and fields.get("byte skip", "0") == "0"
    if "data file" in fields or "datafile" in fields or size is None or not simple or encoding not in (
            "raw", "gzip", "gz"):
        return
    try:
        values = int(np.prod([int(v) for v in fields.get("sizes", "").split()], dtype=np.int64))
    except ValueError:
        return
    _check_payload(path, offset, values * size, None if encoding == "raw" else _GZIP_WBITS)


def _check_payload(path: Path, offset: int, expected: int, wbits: int | None) -> None:
    """Raise InputError when the data from `offset` (inflated by `wbits`) are corrupt or shorter than `expected`."""
    stream, chunks = _open_payload(path, offset, wbits)
    with stream:
        total, _, _ = _count_bytes_and_nonfinite(chunks, 0, 0, None)
    if total < expected:
        raise _cut_short(path, f"the header describes {expected} bytes of voxel data, the file holds {total}")


_MET_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}


def _check_metaimage(path: Path) -> None:
    """Check the local raw or zlib data of a MetaImage (.mha) against DimSize, ElementType and channels."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    fields, offset = {}, None
    at = 0
    for line in head.split(b"\n"):
        at += len(line) + 1
        key, _, value = line.decode("latin-1").partition("=")
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            offset = at
            break
    if offset is None or fields["elementdatafile"].upper() != "LOCAL":
        return
    size = _MET_TYPE_BYTES.get(fields.get("elementtype", "").upper())
    try:
        values = int(np.prod([int(v) for v in fields.get("dimsize", "").split()], dtype=np.int64))
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        return
    if size is None or not values:
        return
    compressed = fields.get("compresseddata", "false").lower() == "true"
    _check_payload(path, offset, values * channels * size, _ZLIB_WBITS if compressed else None)


def _check_finite(path: Path, nans: int, infs: int, values: int) -> None:
    """Raise InputError when an image holds NaN or infinite voxels, with their count and what to do."""
    if nans == values:
        raise InputError(f"{path}: every voxel ({values}) is NaN: the file holds no image values. "
                         "Export the volume again.")
    if nans or infs:
        raise InputError(
            f"{path}: {nans + infs} of {values} voxels are not numbers ({nans} NaN, {infs} infinite). Fill them "
            "(e.g. with -1024 HU in a CT, 0 in a mask) and save the file again.")


def _check_orthonormal(direction: np.ndarray, path: Path, what: str = "the direction matrix") -> None:
    """Raise InputError when a direction matrix (columns = axes) is not orthonormal: a sheared or skewed grid,
    which no result could keep (LiverLocalization's outputs share the input's grid exactly)."""
    direction = np.asarray(direction, dtype=float)
    gram = direction.T @ direction
    if np.abs(gram - np.eye(len(gram))).max() <= ORTHONORMAL_TOLERANCE:
        return
    norms = np.sqrt(np.clip(np.diag(gram), 1e-12, None))
    cosines = np.abs(gram / np.outer(norms, norms))[np.triu_indices(len(gram), 1)]
    worst = float(np.degrees(np.arccos(np.clip(cosines.max(), 0.0, 1.0)))) if cosines.size else 90.0
    raise InputError(
        f"{path}: {what} is not orthonormal (axes at {worst:.1f}° instead of 90°, or not of unit length): a "
        "sheared grid, which the results cannot keep. Resample the volume onto an orthogonal grid (e.g. Slicer's "
        "Resample Scalar/Vector/DWI Volume) and save it again.")


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
    if not series_ids:
        raise InputError(f"{folder}: a folder with no DICOM series in it. Point to a folder of DICOM slices or an image file.")
    files = max((reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len)
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: the DICOM series cannot be read ({str(exc).strip().splitlines()[-1]}).") from None


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an image (format from the suffix), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
    return path


def validate_ct(image: sitk.Image, name: str = "The input volume") -> sitk.Image:
    """Check that an image is a usable 3-D CT in Hounsfield units; returns it as float32.

    Raises InputError for 2-D or tiny volumes, vector images, NaN/inf, constant images and
    intensity ranges that are not CT (e.g. MRI, or CT stored without rescale to HU).
    """
    if image.GetDimension() != 3:
        raise InputError(f"{name} is {image.GetDimension()}-D; a 3-D CT volume is needed (load the whole series).")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour/vector); a scalar CT is needed.")
    size = image.GetSize()
    if min(size) < 8:
        raise InputError(f"{name} has size {size}: at least 8 voxels along every axis are needed (is it a single slice or a thin stack?).")
    spacing = image.GetSpacing()
    if min(spacing) <= 0 or max(spacing) > 20:
        raise InputError(f"{name} has voxel spacing {spacing} mm, which is not a CT's; check the file's header.")
    arr = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(arr)
    if not finite.all():
        if np.isnan(arr).all():
            raise InputError(f"{name} is NaN everywhere: it holds no image values. Export the volume again.")
        bad = int(finite.size - np.count_nonzero(finite))
        raise InputError(f"{name} holds {bad} NaN or infinite voxel(s) of {finite.size}; fill them (e.g. with "
                         "-1024 HU) before running.")
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo < 1:
        raise InputError(f"{name} is constant ({lo:g} everywhere): nothing can be segmented.")
    p50 = float(np.percentile(arr[:: max(1, arr.shape[0] // 16), ::4, ::4], 50))
    if lo > -200 or hi < 100 or lo < -3100 or hi > 40000 or not (-1100 <= p50 <= 500):
        raise InputError(
            f"{name} does not look like CT in Hounsfield units (range {lo:g} to {hi:g}, median {p50:g}); "
            "air should be near -1000 HU and liver near 100 HU. Check the modality, or rescale the values to HU."
        )
    return sitk.Cast(image, sitk.sitkFloat32)


def read_markups(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a Slicer markups file (``.mrk.json``) or a Slicer/ITK ``.fcsv``: label → point in LPS mm.

    Points in files stated as RAS are converted; undefined points are skipped. Labels of the known landmarks are
    taken whatever their case, surrounding spaces or separators (``"rhv "`` → ``RHV``, ``"ivc inferior"`` →
    ``IVC_inferior``), so a typing slip never reads as a missing landmark; when a label appears twice (after
    that matching), InputError names it, in every format.
    """
    points: dict[str, np.ndarray] = {}
    given: dict[str, str] = {}
    for label, p in _markup_points(Path(path)):
        name = canonical_landmark_label(label)
        if name in points:
            also = f" (as {given[name]!r} and {label!r})" if given[name] != label else ""
            raise InputError(f"{path}: landmark {name!r} appears twice{also}; keep one point per label.")
        points[name], given[name] = p, label
    return points


def canonical_landmark_label(label: str) -> str:
    """A known landmark's name for a label matching it up to case, surrounding spaces and the separators space,
    '-' and '_' ('rhv ' → 'RHV'); any other label stripped of surrounding spaces."""
    from .labels import LANDMARK_NAMES

    def key(text: str) -> str:
        return re.sub(r"[\s_-]+", "_", text.strip()).upper()

    return {key(n): n for n in LANDMARK_NAMES}.get(key(label), label.strip())


def read_lesion_points(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Points clicked inside lesions, from a markups file as `read_markups` reads it: name → LPS mm. Labels may
    be empty or repeated (Slicer numbers new points itself): each point is named by its label, or 'point N',
    with ' (N)' added where a name repeats. InputError when the file holds no defined point."""
    points: dict[str, np.ndarray] = {}
    for n, (label, p) in enumerate(_markup_points(Path(path)), start=1):
        name = label or f"point {n}"
        if name in points:
            name = f"{name} ({n})"
        points[name] = p
    if not points:
        raise InputError(f"{path}: no defined point; click at least one point inside a lesion.")
    return points


def _json_kind(value) -> str:
    """What a JSON value is, in the words of a message ('a list', 'a string', …)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _wrong_type(path: Path, where: str, value, expected: str) -> InputError:
    """The error for a markups field of the wrong JSON type."""
    return InputError(f"{path}: {where} is {_json_kind(value)}, not {expected}; the file does not follow Slicer's "
                      "markups schema. Save the points from Slicer as a Markups JSON (.mrk.json) file.")


def _is_number(value) -> bool:
    """A JSON number (true/false excluded, though Python counts them as int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _markup_points(path: Path) -> list[tuple[str, np.ndarray]]:
    """(label, LPS point) of every defined control point of a .mrk.json or .fcsv file, in file order.

    Every value is type-checked, so a file that is valid JSON but not a markups file gives InputError naming
    the field rather than a Python error."""
    if not path.exists():
        raise InputError(f"{path}: no such markups file.")
    if path.is_dir():
        raise InputError(f"{path}: a folder, not a markups file; give the .mrk.json or .fcsv file.")
    if path.suffix.lower() == ".fcsv":
        return _read_fcsv(path)
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a Slicer markups JSON file ({exc}).") from None
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not markups:
        raise InputError(f"{path}: no 'markups' list; save the points from Slicer as a Markups JSON (.mrk.json) file.")
    if not isinstance(markups, list):
        raise _wrong_type(path, "'markups'", markups, "a list")
    points: list[tuple[str, np.ndarray]] = []
    for i, markup in enumerate(markups):
        if not isinstance(markup, dict):
            raise _wrong_type(path, f"markups[{i}]", markup, "an object")
        system = markup.get("coordinateSystem", "LPS")
        if not isinstance(system, str) or system.upper() not in ("LPS", "RAS"):
            raise InputError(f"{path}: unknown coordinateSystem {system!r}; expected LPS or RAS.")
        control_points = markup.get("controlPoints") or []
        if not isinstance(control_points, list):
            raise _wrong_type(path, f"markups[{i}].controlPoints", control_points, "a list")
        for j, cp in enumerate(control_points):
            if not isinstance(cp, dict):
                raise _wrong_type(path, f"markups[{i}].controlPoints[{j}]", cp, "an object")
            if cp.get("positionStatus", "defined") != "defined" or "position" not in cp:
                continue
            label = cp.get("label", "")
            if not isinstance(label, str) and not _is_number(label):
                raise _wrong_type(path, f"the label of control point {j + 1}", label, "a string")
            label = str(label).strip()
            position = cp["position"]
            if not (isinstance(position, list) and len(position) == 3 and all(map(_is_number, position))
                    and all(abs(v) < 1e12 for v in position)):
                raise InputError(f"{path}: control point {label!r} has an invalid position {position!r}; "
                                 "a position is a list of 3 finite numbers (mm).")
            p = np.asarray(position, dtype=float)
            points.append((label, ras_to_lps(p) if system.upper() == "RAS" else p))
    return points


def _read_fcsv(path: Path) -> list[tuple[str, np.ndarray]]:
    """(label, LPS point) of the rows of a Slicer/ITK .fcsv file (RAS unless its header says LPS)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text .fcsv file ({exc}).") from None
    system = "RAS"
    points: list[tuple[str, np.ndarray]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            if "CoordinateSystem" in line:
                value = line.split("=")[-1].strip().upper()
                system = {"0": "RAS", "1": "LPS"}.get(value, value)
                if system not in ("LPS", "RAS"):
                    raise InputError(f"{path}: unknown CoordinateSystem {value!r}; expected LPS or RAS.")
            continue
        fields = line.split(",")
        if len(fields) < 12:
            continue
        try:
            p = np.asarray([float(v) for v in fields[1:4]])
        except ValueError:
            p = np.full(3, np.nan)
        if not np.isfinite(p).all():
            raise InputError(f"{path}: line {number}: the position {','.join(fields[1:4])!r} is not 3 finite "
                             "numbers (mm).")
        points.append((fields[11].strip(), ras_to_lps(p) if system == "RAS" else p))
    return points


def write_markups(path: str | os.PathLike, landmarks_lps: dict[str, np.ndarray], coordinate_system: str = "LPS") -> Path:
    """Write landmarks (label → LPS mm) as a Slicer point-list markups file in LPS or RAS."""
    coordinate_system = coordinate_system.upper()
    if coordinate_system not in ("LPS", "RAS"):
        raise ValueError("coordinate_system must be 'LPS' or 'RAS'")
    control_points = []
    for i, (label, p) in enumerate(landmarks_lps.items(), start=1):
        q = lps_to_ras(p) if coordinate_system == "RAS" else np.asarray(p, dtype=float)
        control_points.append({
            "id": str(i), "label": label, "description": "", "associatedNodeID": "",
            "position": [round(float(v), 4) for v in q],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": False, "visibility": True, "positionStatus": "defined",
        })
    doc = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [{
            "type": "Fiducial", "coordinateSystem": coordinate_system, "coordinateUnits": "mm",
            "locked": False, "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(control_points), "controlPoints": control_points,
            "measurements": [],
        }],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path
