"""The segmentation as a DICOM Segmentation object (DICOM SEG) that references the CT series it is made from.

For a CT read from a DICOM folder, `write_dicom_seg` writes the result's segments (`pipeline.result_segments`: the
names, SNOMED CT codes and colours of the .seg.nrrd) as one binary DICOM SEG made with highdicom. The SEG copies
the source's Patient, Study and Frame of Reference, lists every source image in its Referenced Series Sequence,
and each frame names the source slice it lies on. Frame order rests on io's slice order: slice k of the CT (and of
every label map, which share its grid) is file k of `io.dicom_series_files`, and the source headers are checked
against the CT's grid before anything is written. highdicom and pydicom (the `dicom` extra) are imported only here,
inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__, dependencies, labels
from .segfile import SegmentSpec, default_region

SEG_FILE = "segmentation.dcm"
SERIES_NUMBER = 9100  # far from the scanner's own series numbers
SERIES_DESCRIPTION = "LiverLocalization segmentation"
CONTENT_LABEL = "LIVERLOC"  # a DICOM CS value: upper case, 16 characters at most
POSITION_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-3


def cielab_dicom(rgb: tuple[float, float, float]) -> list[int]:
    """An sRGB colour (0..1 each) as DICOM's Recommended Display CIELab Value: L* scaled 0..100 → 0..65535, a* and
    b* -128..127 → 0..65535, with the D65 white point (as highdicom and dcmqi, Slicer's DICOM SEG converter)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in np.clip(rgb, 0.0, 1.0)]
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz / np.array([0.95047, 1.0, 1.08883])]
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return [int(round(lab[0] * 65535 / 100)), *(int(round((v + 128) * 65535 / 255)) for v in lab[1:])]


def _coded(hd, code: labels.Code):
    """A labels.Code as highdicom's CodedConcept."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def segment_description(hd, number: int, spec: SegmentSpec):
    """The SEG's description of one segment: number, label (the spec's name), SNOMED CT category and type with the
    type modifier when the style has one (IVa/IVb), the liver as anatomic region of a lesion (as the .seg.nrrd
    codes it), the result ID as tracking ID, and the style's colour."""
    from pydicom.sequence import Sequence

    region = default_region(spec.style)
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=spec.name[:64],
        segmented_property_category=_coded(hd, spec.style.category),
        segmented_property_type=_coded(hd, spec.style.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(hd),
        tracking_uid=hd.UID(), tracking_id=spec.segment_id,
        anatomic_regions=[_coded(hd, region)] if region is not None else None,
    )
    if spec.style.modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = Sequence(
            [_coded(hd, spec.style.modifier)])
    description.RecommendedDisplayCIELabValue = cielab_dicom(spec.style.color)
    return description


def _algorithm(hd):
    """The algorithm that made the segments: LiverLocalization's EM tissue model (a cluster analysis)."""
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(name="LiverLocalization", version=__version__,
                                              family=codes.cid7162.ClusterAnalysis)


def check_sources_match(reference: sitk.Image, sources: list, files: list[Path]) -> None:
    """Raise ValueError unless the source headers lie exactly on the CT's grid in the CT's slice order: one file per
    slice, its rows × columns the grid's, its ImageOrientationPatient the grid's first two axes and its
    ImagePositionPatient the centre of the grid's first voxel of that slice."""
    size, spacing = reference.GetSize(), reference.GetSpacing()
    direction = np.reshape(reference.GetDirection(), (3, 3))
    if len(sources) != size[2]:
        raise ValueError(f"{len(sources)} source files for a CT of {size[2]} slices")
    origin = np.asarray(reference.GetOrigin())
    for k, (ds, file) in enumerate(zip(sources, files)):
        expected = origin + k * spacing[2] * direction[:, 2]
        position = np.asarray(ds.ImagePositionPatient, dtype=float)
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if (int(ds.Rows), int(ds.Columns)) != (size[1], size[0]) or np.abs(
                orientation - direction[:, :2].T.ravel()).max() > ORIENTATION_TOLERANCE or np.abs(
                position - expected).max() > max(POSITION_TOLERANCE_MM, 0.01 * spacing[2]):
            raise ValueError(f"{Path(file).name} does not lie on slice {k} of the CT's grid")


def write_dicom_seg(path: str | os.PathLike, reference: sitk.Image, segments: list[SegmentSpec],
                    source_files: list[Path]) -> Path:
    """Write `segments` (masks [z, y, x] on the reference CT's grid) as a binary DICOM SEG referencing the DICOM
    files the CT was read from (`io.dicom_series_files`, in the CT's slice order); returns the path.

    Frames that hold no voxel of a segment are left out (highdicom's default), so the file grows with the segments'
    extent, not the CT's. Raises MissingPackage without highdicom and ValueError when the files are not the CT's
    slices."""
    hd = dependencies.import_required(dependencies.HIGHDICOM)
    import pydicom

    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in source_files]
    check_sources_match(reference, sources, source_files)
    for ds in sources:  # highdicom copies the pixel measures from the sources; CT headers may leave this empty
        if not getattr(ds, "SliceThickness", None):
            ds.SliceThickness = reference.GetSpacing()[2]
    descriptions = [segment_description(hd, number, spec) for number, spec in enumerate(segments, start=1)]
    pixels = np.zeros((*segments[0].mask.shape, len(segments)), dtype=bool)  # frames, rows, columns, segments
    for index, spec in enumerate(segments):
        pixels[..., index] = spec.mask
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="LiverLocalization",
        manufacturer_model_name="liverloc", software_versions=__version__, device_serial_number="none",
        content_description=SERIES_DESCRIPTION, content_label=CONTENT_LABEL,
    )
    seg.SeriesDescription = SERIES_DESCRIPTION
    seg.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: segment labels hold dashes ('Lesion 1 – cyst – VII')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(path))
    return path


def write_run_seg(folder: Path, result, ct_folder: Path, series_uid: str | None = None) -> Path | None:
    """Write `liverloc run`'s DICOM SEG (SEG_FILE in `folder`) for a CT read from `ct_folder`; returns its path.

    Without highdicom, or when the source files do not lie on the CT's grid, no SEG is written and a note joins
    the result's warnings (so the summary and report.json say why): the other results stand on their own."""
    from . import io, pipeline

    if not dependencies.is_installed(dependencies.HIGHDICOM):
        result.warnings.append(f"No DICOM SEG ({SEG_FILE}): it needs the Python package 'highdicom' (pip install "
                               f"\"{dependencies.HIGHDICOM.requirement}\"); the .seg.nrrd holds the same segments.")
        return None
    files = io.dicom_series_files(ct_folder, series_uid)
    try:
        return write_dicom_seg(folder / SEG_FILE, result.ct, pipeline.result_segments(result), files)
    except (ValueError, AttributeError) as exc:  # files off the CT's grid; a source header highdicom needs
        result.warnings.append(f"No DICOM SEG ({SEG_FILE}): {exc}; the .seg.nrrd holds the same segments.")
        return None
