"""Reading and writing images and Slicer markups, with geometry kept exactly.

Images: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and DICOM series folders,
all through SimpleITK. Markups: Slicer's ``.mrk.json`` (schema v1.0.x), honouring the file's
``coordinateSystem`` (LPS or RAS); landmarks in memory are LPS millimetres.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


def path_problem(path: str | os.PathLike, what: str) -> str | None:
    """Why the image library cannot use `path` (None when it can): a name with bytes that are not UTF-8 text (Linux
    keeps them as they are; SimpleITK aborts the whole process on such a path instead of raising)."""
    text = str(Path(path).absolute())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return (f"{what} {shown}: the path holds bytes that are not UTF-8 text, which the image library cannot "
                "open; rename the file or folder (or the folder above it that holds them)")
    return None


def _require_usable_path(path: str | os.PathLike, what: str) -> None:
    problem = path_problem(path, what)
    if problem:
        raise InputError(problem + ".")


def itk_reason(exc: BaseException) -> str:
    """The last line of an ITK/GDCM exception's text (its own reason, after the C++ source lines), or "unknown
    reason" when the text is empty: what an InputError quotes in brackets."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else "unknown reason"


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what ITK, GDCM and MetaIO print to the process's stderr (file descriptor 2) while the body runs.

    They print their own lines ("MetaImage: Read: Cannot open data file", GDCM's "No Series were found"
    warning with its source file and line) besides the exception that the caller turns into one clear InputError,
    so a user would otherwise see several lines, some of them C++ source paths. Python's own sys.stderr is
    flushed first and is written again once the body ends; where descriptor 2 cannot be redirected (closed), the
    body runs as it is.
    """
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def read_image(path: str | os.PathLike, series_uid: str | None = None) -> sitk.Image:
    """Read a 3-D image file or a DICOM series folder; the geometry is kept as stored.

    A folder is read as the DICOM series it holds; when it holds several, `series_uid` (a SeriesInstanceUID)
    names the one to read and InputError lists them without it. The series' slices are checked from their headers
    before ITK reads them (see `_read_dicom_folder`): one orientation, no duplicate, an even step, no tilt.
    Raises InputError when the path is missing or unreadable, when a file is cut short or corrupt (checked on the
    file's own bytes: ITK reads a short NIfTI with the missing voxels as 0), when voxels are NaN or infinite
    (counted on the file's bytes for NIfTI, whose reader turns them into 0), and when the grid is sheared (a
    non-orthonormal direction matrix, which ITK keeps in NRRD/MetaImage and replaces by the qform in NIfTI).
    """
    path = Path(path)
    _require_usable_path(path, "The image")
    if not path.exists():
        raise InputError(f"{path}: no such file or folder. Check the path.")
    if path.is_dir():
        image = _read_dicom_folder(path, series_uid)
    elif series_uid is not None:
        raise InputError(f"{path}: a file, not a DICOM folder; a series UID picks a series in a folder of DICOM "
                         "files. Leave the series out, or give the folder.")
    else:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: the file is empty (0 bytes); an interrupted copy, download or save? "
                             f"{COPY_AGAIN}")
        check_file_integrity(path)
        try:
            with quiet_native_stderr():
                image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            first = itk_reason(exc)
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
    header describes, NaN/inf voxels, a sheared sform, a zero or non-finite voxel spacing. NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) with raw or
    compressed data in the file or in one data file beside it: a data file that is missing, a stream that ends
    early or is corrupt, fewer voxel bytes than the header describes. Other layouts (a list or pattern of data
    files, skipped header bytes) are left to ITK.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
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
    float/complex components, else None), sform_code, sform (3 × 3 linear part of srow_x/y/z), spacing (pixdim of
    the spatial axes).
    """
    for endian in "<>":
        size = struct.unpack_from(endian + "i", head, 0)[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348 and head[344:347] == b"n+1":
            dims = struct.unpack_from(endian + "8h", head, 40)
            datatype, bitpix = struct.unpack_from(endian + "2h", head, 70)
            offset, minimum = struct.unpack_from(endian + "f", head, 108)[0], 352
            sform_code = struct.unpack_from(endian + "h", head, 254)[0]
            srow = struct.unpack_from(endian + "12f", head, 280)
            pixdim = struct.unpack_from(endian + "8f", head, 76)
        elif size == 540 and len(head) >= 540 and head[4:7] == b"n+2":
            datatype, bitpix = struct.unpack_from(endian + "2h", head, 12)
            dims = struct.unpack_from(endian + "8q", head, 16)
            offset, minimum = struct.unpack_from(endian + "q", head, 168)[0], 544
            sform_code = struct.unpack_from(endian + "i", head, 348)[0]
            srow = struct.unpack_from(endian + "12d", head, 400)
            pixdim = struct.unpack_from(endian + "8d", head, 104)
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
            "spacing": tuple(float(v) for v in pixdim[1:min(n, 3) + 1]),
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
        bad = [v for v in header["spacing"] if not (np.isfinite(v) and v != 0)]
        if bad:  # the NIfTI library replaces such a pixdim by 1 mm without a word: wrong volumes and distances
            raise InputError(f"{path}: the header's voxel spacing (pixdim) is {_mm(header['spacing'])}; a spacing of "
                             f"{bad[0]:g} mm would be read as 1 mm, giving wrong volumes and distances. Export the "
                             "volume again, or fix the header's pixdim.")
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
    if at < 0 and len(head) < 1 << 16 and b"\r\n" not in head:  # a detached header (.nhdr) may end without one
        at = len(head.rstrip(b"\n"))
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
    detached = fields.get("data file", fields.get("datafile"))
    if detached is not None:
        data = _detached_data_file(path, detached, "data file")
        if data is None:
            return
        path, offset = data, 0
    if size is None or not simple or encoding not in ("raw", "gzip", "gz"):
        return
    try:
        values = int(np.prod([int(v) for v in fields.get("sizes", "").split()], dtype=np.int64))
    except ValueError:
        return
    _check_payload(path, offset, values * size, None if encoding == "raw" else _GZIP_WBITS)


def _detached_data_file(header: Path, name: str, field: str) -> Path | None:
    """The one data file a NRRD or MetaImage header names (relative to the header's folder); None for a list or a
    pattern of files (left to ITK). Raises InputError when the file is not there, where ITK would print its own
    lines and fail with "No such file or directory" without naming the file."""
    name = name.strip()
    if not name or "%" in name or name.upper().startswith("LIST") or " " in name:
        return None
    data = Path(name) if Path(name).is_absolute() else header.parent / name
    if not data.is_file():
        raise InputError(f"{header}: its voxel data file {name} (the header's {field!r}) is not there ({data}). Copy "
                         "the header and its data file together, or save the volume as one file (.nrrd, .nii.gz).")
    return data


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
    """Check the raw or zlib data of a MetaImage (.mha, or .mhd with its data file) against DimSize, ElementType
    and channels."""
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
    if offset is None:
        return
    if fields["elementdatafile"].upper() != "LOCAL":
        data = _detached_data_file(path, fields["elementdatafile"], "ElementDataFile")
        if data is None or fields.get("headersize", "0") != "0":
            return
        path, offset = data, 0
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


# ------------------------------------------------------------------------ DICOM series

DICOM_STEP_TOLERANCE_MM = 0.01  # steps differ when by more than this or DICOM_STEP_TOLERANCE_FRACTION of the step
DICOM_STEP_TOLERANCE_FRACTION = 0.01
DICOM_ORIENTATION_TOLERANCE = 1e-3  # largest difference of ImageOrientationPatient cosines within one series
DICOM_LATERAL_TOLERANCE = 0.1  # sideways offset a slice may have from the stack's normal line, in pixels
DICOM_CONVERT = ("Convert the series with a tool that checks its geometry (dcm2niix, or Slicer's DICOM module) and "
                 "run on the NIfTI")
_POSITION, _ORIENTATION = "0020|0032", "0020|0037"


@dataclass(frozen=True)
class DicomSlice:
    """What the geometry checks need of one DICOM file, read from its header alone."""

    file: Path
    position: np.ndarray  # ImagePositionPatient: the first voxel's centre, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient: row then column direction cosines
    size: tuple[int, ...]  # columns, rows (and frames, for a multi-frame file)
    spacing: tuple[float, float]  # in-plane pixel spacing, mm


def _read_dicom_folder(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series of a folder once its slices' geometry has been checked from their headers.

    ITK alone reads the largest series without a word and spreads the slices evenly between the first and the
    last, so a duplicated or missing slice gives a wrong spacing and origin; here the series is named or the
    only one, the slices are sorted along their normal and checked (one orientation, no duplicates, an even step,
    no tilt), and the image ITK makes of them must carry the measured step, origin and normal.
    """
    ordered, step, normal = _checked_dicom_slices(folder, series_uid)
    image = _read_dicom_files(folder, [s.file for s in ordered])
    _check_read_geometry(folder, image, ordered, step, normal)
    return image


def dicom_series_files(folder: str | os.PathLike, series_uid: str | None = None) -> list[Path]:
    """The files of the DICOM series that `read_image(folder, series_uid)` reads, in its slice order: slice k of
    the image (index [k] of its array) is file k, whatever the files' names or header order. Raises InputError as
    read_image does (no series, several without a UID, a slice geometry that is not one regular grid)."""
    ordered, _, _ = _checked_dicom_slices(Path(folder), series_uid)
    return [s.file for s in ordered]


def _checked_dicom_slices(folder: Path, series_uid: str | None) -> tuple[list[DicomSlice], float, np.ndarray]:
    """The slices of the folder's chosen series sorted along their normal, with their step and normal, once
    checked (see `_check_slice_geometry`)."""
    series = _dicom_series(folder)
    uid = _pick_series(folder, series, series_uid)
    slices = [_dicom_slice_header(file) for file in series[uid]]
    return _check_slice_geometry(folder, slices)


def _dicom_series(folder: Path) -> dict[str, tuple[str, ...]]:
    """The DICOM series of a folder (not its subfolders), as GDCM groups the files: SeriesInstanceUID → files.
    Raises InputError when there is none."""
    reader = sitk.ImageSeriesReader()
    with quiet_native_stderr():
        uids = reader.GetGDCMSeriesIDs(str(folder)) or ()
        if not uids:
            raise InputError(f"{folder}: a folder with no DICOM series in it. Point to a folder of DICOM slices or "
                             "an image file.")
        return {uid: tuple(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}


def _series_summary(uid: str, files: tuple[str, ...]) -> str:
    """One series as a message lists it: its UID, its number of files, its modality and description when the first
    file's header holds them, so that a user can tell the CT from a scout or a dose report."""
    details = [f"{len(files)} slice{'s' if len(files) != 1 else ''}"]
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        with quiet_native_stderr():
            reader.ReadImageInformation()
        for key, quoted in (("0008|0060", False), ("0008|103e", True)):
            value = reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
            if value:
                details.append(repr(value) if quoted else value)
    except RuntimeError:
        pass  # the description is a courtesy; an unreadable file is reported when its series is read
    return f"{uid} ({', '.join(details)})"


def _pick_series(folder: Path, series: dict[str, tuple[str, ...]], series_uid: str | None) -> str:
    """The UID of the series to read: `series_uid` when the folder holds it, else the folder's only series.
    Raises InputError listing every series (UID, slices, modality, description) when the choice is not given or
    not there, rather than taking the largest silently."""
    if series_uid is not None and series_uid.strip() in series:
        return series_uid.strip()
    if series_uid is None and len(series) == 1:
        return next(iter(series))
    listing = "; ".join(_series_summary(uid, files) for uid, files in series.items())
    if series_uid is not None:
        raise InputError(f"{folder}: no DICOM series with SeriesInstanceUID {series_uid!r}; the folder holds "
                         f"{listing}. Give one of these UIDs.")
    raise InputError(f"{folder}: {len(series)} DICOM series in one folder: {listing}. Pick one with --series UID "
                     "(liverloc run) or series_uid= (io.read_image), or put each series in its own folder.")


def _dicom_numbers(reader: sitk.ImageFileReader, key: str, count: int, file: Path, name: str) -> np.ndarray:
    """The `count` numbers of a DICOM header field (backslash-separated decimal strings); InputError naming the
    file and the tag when the field is missing or not numbers, since the slice's place is then unknown."""
    text = reader.GetMetaData(key) if reader.HasMetaDataKey(key) else ""
    try:
        values = np.array([float(v) for v in text.strip().split("\\")])
    except ValueError:
        values = np.array([])
    if values.size != count or not np.isfinite(values).all():
        found = f"{text.strip()!r}" if text.strip() else "missing"
        raise InputError(f"{file}: the DICOM field {name} ({key.replace('|', ',')}) is {found}, not {count} numbers, "
                         f"so the slice's place in the volume is unknown. {DICOM_CONVERT}, or export the series "
                         "again from the scanner or PACS.")
    return values


def _dicom_slice_header(file: str | Path) -> DicomSlice:
    """Read one DICOM file's header (not its pixels): position, orientation, size and pixel spacing."""
    file = Path(file)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        with quiet_native_stderr():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        first = itk_reason(exc)
        raise InputError(f"{file}: cannot be read as DICOM ({first}). {COPY_AGAIN}") from None
    position = _dicom_numbers(reader, _POSITION, 3, file, "ImagePositionPatient")
    orientation = _dicom_numbers(reader, _ORIENTATION, 6, file, "ImageOrientationPatient")
    return DicomSlice(file, position, orientation, tuple(reader.GetSize()), tuple(reader.GetSpacing()[:2]))


def _check_slice_geometry(folder: Path, slices: list[DicomSlice]) -> tuple[list[DicomSlice], float, np.ndarray]:
    """Check that a series' slices make one regular 3-D grid; returns them sorted along the slice normal, the
    step between them (mm) and the normal.

    Raises InputError for a single slice, mixed orientations, sizes or pixel spacings, two slices at the same
    place, an uneven step (a missing slice) and slices that are not stacked along their normal (gantry tilt):
    ITK reads each of these without complaint into a grid that is not the patient's.
    """
    _check_not_single(folder, slices)
    normal = _common_normal(folder, slices)
    heights = np.array([s.position @ normal for s in slices])
    order = np.argsort(heights, kind="stable")
    ordered, heights = [slices[i] for i in order], heights[order]
    steps = np.diff(heights)
    _check_no_duplicates(folder, ordered, steps, normal)
    step = _check_even_steps(folder, ordered, steps, normal)
    _check_stacked_along_normal(folder, ordered, normal)
    return ordered, step, normal


def _check_not_single(folder: Path, slices: list[DicomSlice]) -> None:
    """Refuse a series of one file: one slice is a 2-D image, and a multi-frame file's frame geometry lies in
    sequences that the checks here do not read."""
    if len(slices) > 1:
        return
    frames = slices[0].size[2] if len(slices[0].size) > 2 else 1
    if frames > 1:
        raise InputError(f"{folder}: the series is one multi-frame file ({slices[0].file.name}, {frames} frames), "
                         f"whose slice geometry is not checked here. {DICOM_CONVERT}.")
    raise InputError(f"{folder}: the series has one slice ({slices[0].file.name}): a 2-D image, and a 3-D CT is "
                     "needed. Copy the whole series into the folder.")


def _common_normal(folder: Path, slices: list[DicomSlice]) -> np.ndarray:
    """The unit normal of a series' slices (row × column cosines); InputError when the slices differ in
    orientation, size or pixel spacing (two stacks in one series), or the row and column are not orthonormal."""
    first = slices[0]
    for s in slices[1:]:
        if np.abs(s.orientation - first.orientation).max() > DICOM_ORIENTATION_TOLERANCE:
            raise InputError(
                f"{folder}: the slices have different orientations (ImageOrientationPatient "
                f"{_cosines(first.orientation)} in {first.file.name}, {_cosines(s.orientation)} in {s.file.name}): "
                "two stacks in one series, e.g. axial and reformatted. Keep the slices of one orientation only.")
        if s.size != first.size or not np.allclose(s.spacing, first.spacing, rtol=1e-4, atol=1e-6):
            raise InputError(
                f"{folder}: the slices differ in size or pixel spacing ({first.file.name}: {first.size[:2]} pixels "
                f"of {_mm(first.spacing)} mm; {s.file.name}: {s.size[:2]} of {_mm(s.spacing)} mm): two stacks in one "
                "series. Keep only the slices of one stack in the folder.")
    row, column = first.orientation[:3], first.orientation[3:]
    if abs(np.linalg.norm(row) - 1) > DICOM_ORIENTATION_TOLERANCE or abs(np.linalg.norm(column) - 1) > \
            DICOM_ORIENTATION_TOLERANCE or abs(row @ column) > DICOM_ORIENTATION_TOLERANCE:
        raise InputError(f"{folder}: the ImageOrientationPatient {_cosines(first.orientation)} of "
                         f"{first.file.name} is not two perpendicular unit vectors. {DICOM_CONVERT}.")
    normal = np.cross(row, column)
    return normal / np.linalg.norm(normal)


def _cosines(values: np.ndarray) -> str:
    """Direction cosines as a message writes them."""
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _mm(values) -> str:
    """Lengths in mm as a message writes them."""
    return "×".join(f"{v:g}" for v in values)


def _height_text(s: DicomSlice, normal: np.ndarray) -> str:
    """Where a slice lies along the stack, as a message writes it: the patient coordinate the normal follows
    (z for axial slices), else the distance along the normal."""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) > 0.99:
        return f"{'xyz'[axis]}={s.position[axis]:.6g}"
    return f"{s.position @ normal:.6g} along the slice normal"


def _step_tolerance(step: float) -> float:
    """How much two slice steps may differ and still be one (the header's decimal rounding), mm."""
    return max(DICOM_STEP_TOLERANCE_MM, DICOM_STEP_TOLERANCE_FRACTION * abs(step))


def _check_no_duplicates(folder: Path, ordered: list[DicomSlice], steps: np.ndarray, normal: np.ndarray) -> None:
    """Refuse two slices at the same place (a file copied twice, or two acquisitions in one series), naming them."""
    same = np.flatnonzero(steps <= _step_tolerance(float(np.median(steps))))
    if not same.size:
        return
    pairs = [f"{ordered[i].file.name} and {ordered[i + 1].file.name} at {_height_text(ordered[i], normal)} mm"
             for i in same[:3]]
    more = f" (and {same.size - 3} more pairs)" if same.size > 3 else ""
    raise InputError(f"{folder}: {same.size} pair{'s' if same.size > 1 else ''} of slices at the same place: "
                     f"{'; '.join(pairs)}{more}: a file copied twice, or two acquisitions in one series. Remove the "
                     "extra files or export the series again.")


def _check_even_steps(folder: Path, ordered: list[DicomSlice], steps: np.ndarray, normal: np.ndarray) -> float:
    """The step between slices (mm); InputError naming where it differs from the median step (a missing slice
    shows as a step twice the others), since ITK spreads the slices evenly and the grid would be wrong."""
    step = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - step) > _step_tolerance(step))
    if not uneven.size:
        return step
    places = []
    for i in uneven[:3]:
        missing = round(steps[i] / step) - 1
        guess = f" ({missing} slice{'s' if missing > 1 else ''} missing?)" if missing >= 1 and abs(
            steps[i] - (missing + 1) * step) <= _step_tolerance(step) else ""
        places.append(f"between {_height_text(ordered[i], normal)} and {_height_text(ordered[i + 1], normal)} mm "
                      f"({ordered[i].file.name}, {ordered[i + 1].file.name}) the step is {steps[i]:.4g} mm{guess}")
    more = f" (and {uneven.size - 3} more places)" if uneven.size > 3 else ""
    raise InputError(f"{folder}: the slices are not evenly spaced: {'; '.join(places)}{more}; elsewhere "
                     f"{step:.4g} mm. Copy the whole series again (a file may be missing), or, if the scan has "
                     f"uneven spacing, resample it to an even one (e.g. in Slicer) and run on the result.")


def _check_stacked_along_normal(folder: Path, ordered: list[DicomSlice], normal: np.ndarray) -> None:
    """Refuse slices whose positions drift sideways along the stack (gantry tilt, a sheared stack): ITK puts each
    slice straight above the first, so every voxel but the first slice's would be misplaced."""
    offsets = np.array([s.position for s in ordered]) - ordered[0].position
    sideways = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(sideways, axis=1)
    worst = int(np.argmax(drift))
    if drift[worst] <= max(DICOM_STEP_TOLERANCE_MM, DICOM_LATERAL_TOLERANCE * min(ordered[0].spacing)):
        return
    angle = float(np.degrees(np.arctan2(drift[-1], offsets[-1] @ normal)))
    raise InputError(
        f"{folder}: the slices are not stacked along their normal (at {angle:.2f}° to it: gantry tilt or a sheared "
        f"stack); {ordered[worst].file.name} lies {drift[worst]:.3g} mm sideways of where a regular grid puts it. "
        "Convert the series with a tool that corrects gantry tilt (dcm2niix, or Slicer's DICOM module with "
        "acquisition geometry regularization) and run on the result.")


def _read_dicom_files(folder: Path, files: list[Path]) -> sitk.Image:
    """Read DICOM files as one volume, in the order given (first slice = origin)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        with quiet_native_stderr():
            return reader.Execute()
    except RuntimeError as exc:
        first = itk_reason(exc)
        raise InputError(f"{folder}: the DICOM series cannot be read ({first}). {COPY_AGAIN}") from None


def _check_read_geometry(folder: Path, image: sitk.Image, ordered: list[DicomSlice], step: float,
                         normal: np.ndarray) -> None:
    """Check that ITK's volume has the slices' measured geometry: as many slices, the step as z spacing, the first
    slice's position as origin, the normal as third axis (ITK derives these itself, e.g. spacing from the first
    and last slice)."""
    direction = np.reshape(image.GetDirection(), (3, 3))
    found = (image.GetSize()[2], image.GetSpacing()[2], np.asarray(image.GetOrigin()), direction[:, 2])
    if found[0] == len(ordered) and abs(found[1] - step) <= _step_tolerance(step) and np.abs(
            found[2] - ordered[0].position).max() <= DICOM_STEP_TOLERANCE_MM and np.abs(
            found[3] - normal).max() <= DICOM_ORIENTATION_TOLERANCE:
        return
    raise InputError(
        f"{folder}: the volume read has {found[0]} slices {found[1]:.6g} mm apart from origin {_mm(found[2])} along "
        f"{_cosines(found[3])}, where the headers give {len(ordered)} slices {step:.6g} mm apart from "
        f"{_mm(ordered[0].position)} along {_cosines(normal)}. {DICOM_CONVERT}.")


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write an image (format from the suffix), creating the folder; returns the path."""
    path = Path(path)
    _require_usable_path(path, "The output")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
    return path


def validate_ct(image: sitk.Image, name: str = "The input volume") -> sitk.Image:
    """Check that an image is a usable 3-D CT in Hounsfield units; returns it as float32 (a float32 image itself,
    not a copy: images are never modified in place, and a copy of a 512 x 512 x 130 CT is 136 MB).

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
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


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
        doc = json.loads(path.read_text(encoding="utf-8"))
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
        text = path.read_text(encoding="utf-8")
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


def write_markups(path: str | os.PathLike, landmarks_lps: dict[str, np.ndarray], coordinate_system: str = "LPS",
                  descriptions: dict[str, str] | None = None) -> Path:
    """Write landmarks (label → LPS mm) as a Slicer point-list markups file in LPS or RAS; `descriptions`: label →
    the text of that control point's description (empty otherwise)."""
    coordinate_system = coordinate_system.upper()
    if coordinate_system not in ("LPS", "RAS"):
        raise ValueError("coordinate_system must be 'LPS' or 'RAS'")
    control_points = []
    for i, (label, p) in enumerate(landmarks_lps.items(), start=1):
        q = lps_to_ras(p) if coordinate_system == "RAS" else np.asarray(p, dtype=float)
        control_points.append({
            "id": str(i), "label": label, "description": (descriptions or {}).get(label, ""), "associatedNodeID": "",
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
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path
