"""DICOM SEG output: for DICOM input, the segmentation also as a DICOM SEG that references the source series.

The SEG is read back with pydicom alone (each frame placed by the source image it names, against the heights the
test wrote) and with highdicom: labels, SNOMED CT codes and colours as in labels.py, every source image referenced,
the patient and study copied, every segment's voxels as in the label maps, whatever order the files are in.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_series import STEP, UID, write_series
from LiverLocalizationLib import cli, dependencies, dicomseg, geometry, io, labels, pipeline, segfile

hd = pytest.importorskip("highdicom", reason="highdicom is not installed (pip install -e '.[dicom]')")
pydicom = pytest.importorskip("pydicom")

N, SLICES = 32, 12
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.2.1125.7.9"
PATIENT = {"0010|0010": "Doe^Jane", "0010|0020": "LL-0031", "0010|0030": "19600101", "0010|0040": "F",
           "0020|0052": FRAME_OF_REFERENCE, "0020|0010": "S31", "0008|0050": "A31"}
ORDERS = ("ascending", "descending")


def synthetic_ct() -> tuple[np.ndarray, np.ndarray]:
    """A small CT [z, y, x] in HU (air, a round body, a brighter liver block with a dark lesion) and its liver."""
    z, y, x = np.mgrid[:SLICES, :N, :N]
    ct = np.where((x - 16) ** 2 + (y - 16) ** 2 < 15 ** 2, 40.0, -1000.0)
    ct += np.random.default_rng(31).normal(0, 8, ct.shape)
    # not symmetric in z, so that a reversed slice order shows
    liver = (x >= 6) & (x < 26) & (y >= 8) & (y < 24) & (z >= 1) & (z < 8)
    ct[liver] += 60
    ct[(x - 14) ** 2 + (y - 15) ** 2 + ((z - 5) * STEP / 0.8) ** 2 < 16] = -10
    return np.rint(ct).astype(np.int16), liver


def write_ct_series(folder: Path, order: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Write the synthetic CT as a DICOM series, slice z at height STEP·z, the files in ascending or descending
    height order. Returns the CT, the liver and each file's SOP Instance UID → the CT slice (z) it holds."""
    ct, liver = synthetic_ct()
    heights = [STEP * z for z in range(SLICES)]
    if order == "descending":
        heights = heights[::-1]
    write_series(folder, heights, n=N, pixels=[ct[round(h / STEP)] for h in heights], tags=PATIENT)
    return ct, liver, {f"{UID}.{k + 1}": round(h / STEP) for k, h in enumerate(heights)}


def fake_result(reference: sitk.Image, liver: np.ndarray) -> SimpleNamespace:
    """What pipeline.result_segments reads of a result: the liver, a classified lesion, vessels and the nine
    Couinaud segments, each mask a distinct, asymmetric region (a slice order mistake changes it)."""
    z, y, x = np.indices(liver.shape)
    couinaud = np.where(liver, 1 + (x // 3 + y // 5 + z) % 9, 0)  # labels 1..9: I, II, III, IVa, IVb, V..VIII
    lesions = ((x - 14) ** 2 + (y - 15) ** 2 + (z - 3) ** 2 < 9) & liver
    vessels = liver & (x == 20) & (z >= 4)
    image = lambda a: geometry.copy_geometry(a.astype(np.uint8), reference)  # noqa: E731
    return SimpleNamespace(liver_mask=image(liver), lesion_labels=image(lesions), vessel_mask=image(vessels),
                           couinaud=image(couinaud), couinaud_segments=9,
                           lesions=[{"id": 1, "kind": "metastasis", "main_segment": "VII"}])


def code_of(item) -> labels.Code:
    return labels.Code(item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning)


def frames_by_slice(seg, slice_of_uid: dict[str, int], shape) -> dict[int, np.ndarray]:
    """Segment number → its voxels [z, y, x], each frame put on the slice of the source image it references (pydicom
    only: no highdicom reading logic)."""
    pixels = seg.pixel_array.reshape(-1, *shape[1:])
    volumes = {}
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        volume = volumes.setdefault(number, np.zeros(shape, bool))
        assert not volume[slice_of_uid[uid]].any(), "two frames of one segment on one slice"
        volume[slice_of_uid[uid]] = pixels[frame] > 0
    return volumes


@pytest.mark.parametrize("order", ORDERS)
def test_the_seg_carries_the_segments_codes_references_and_voxels_of_the_label_maps(tmp_path, order):
    ct, liver, slice_of_uid = write_ct_series(tmp_path / "ct", order)
    reference = io.read_image(tmp_path / "ct")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reference), ct)  # io's slice z is height STEP·z
    specs = pipeline.result_segments(fake_result(reference, liver))
    path = dicomseg.write_dicom_seg(tmp_path / "segmentation.dcm", reference, specs,
                                    io.dicom_series_files(tmp_path / "ct"))

    seg = pydicom.dcmread(path)
    source = pydicom.dcmread(tmp_path / "ct" / "slice000.dcm", stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                    "AccessionNumber", "FrameOfReferenceUID"):
        assert getattr(seg, keyword) == getattr(source, keyword), keyword
    assert seg.FrameOfReferenceUID == FRAME_OF_REFERENCE and seg.SeriesInstanceUID != UID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == UID
    referenced = [item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(slice_of_uid)  # every slice of the series, each once

    # Segments: the names, SNOMED CT codes (with the IVa/IVb modifier) and colours of labels.py, in order.
    assert len(seg.SegmentSequence) == len(specs) == 1 + 1 + 1 + 9
    expected_styles = [labels.LIVER, labels.NEOPLASM_STYLE, labels.VESSELS, *labels.couinaud_styles(9).values()]
    for number, (item, spec, style) in enumerate(zip(seg.SegmentSequence, specs, expected_styles), start=1):
        assert item.SegmentNumber == number and item.SegmentLabel == spec.name
        assert code_of(item.SegmentedPropertyCategoryCodeSequence[0]) == style.category
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        assert code_of(type_item) == style.type
        modifiers = [code_of(m) for m in type_item.get("SegmentedPropertyTypeModifierCodeSequence", [])]
        assert modifiers == ([style.modifier] if style.modifier else [])
        regions = [code_of(r) for r in item.get("AnatomicRegionSequence", [])]
        assert regions == ([segfile.LIVER_REGION] if style is labels.NEOPLASM_STYLE else [])
        rgb = hd.color.CIELabColor.from_dicom_value(list(item.RecommendedDisplayCIELabValue)).to_rgb(clip=True)
        np.testing.assert_allclose(rgb, np.array(style.color) * 255, atol=1.5)
    assert [item.SegmentLabel for item in seg.SegmentSequence][:2] == ["Liver", "Lesion 1 – metastasis – VII"]

    # Voxels, placed by each frame's source image on the slice the test wrote it at.
    volumes = frames_by_slice(seg, slice_of_uid, liver.shape)
    for number, spec in enumerate(specs, start=1):
        assert np.asarray(spec.mask).any(), spec.name
        np.testing.assert_array_equal(volumes[number], spec.mask, err_msg=spec.name)

    # highdicom's own reader gives the same voxels, slice by slice in the CT's order.
    read = hd.seg.segread(path)
    uids_in_ct_order = sorted(slice_of_uid, key=slice_of_uid.get)
    pixels = read.get_pixels_by_source_instance(uids_in_ct_order)
    np.testing.assert_array_equal(pixels, np.stack([spec.mask for spec in specs], axis=-1))


def test_source_files_off_the_ct_grid_are_refused(tmp_path):
    write_ct_series(tmp_path / "ct", "ascending")
    reference = io.read_image(tmp_path / "ct")
    files = io.dicom_series_files(tmp_path / "ct")
    specs = [segfile.SegmentSpec("liver", "Liver", np.ones((SLICES, N, N), bool), labels.LIVER)]
    with pytest.raises(ValueError, match="does not lie on slice 0 of the CT's grid"):
        dicomseg.write_dicom_seg(tmp_path / "reversed.dcm", reference, specs, files[::-1])
    with pytest.raises(ValueError, match="11 source files for a CT of 12 slices"):
        dicomseg.write_dicom_seg(tmp_path / "short.dcm", reference, specs, files[:-1])
    assert not (tmp_path / "reversed.dcm").exists() and not (tmp_path / "short.dcm").exists()


def test_the_dicom_colour_is_highdicoms_cielab_of_every_label_colour():
    styles = [labels.LIVER, labels.VESSELS, labels.LESION_STYLE, labels.NEOPLASM_STYLE, labels.CYST_STYLE,
              *labels.couinaud_styles(9).values()]
    for style in styles:
        expected = hd.color.CIELabColor.from_rgb(*(255 * np.array(style.color))).value
        assert np.abs(np.subtract(dicomseg.cielab_dicom(style.color), expected)).max() <= 1, style.name


def run_argv(ct: Path, mask: Path, out: Path) -> list[str]:
    return ["-q", "run", str(ct), "--liver-mask", str(mask), "--no-classify", "--no-figures", "--out", str(out)]


def test_liverloc_run_on_a_dicom_folder_writes_the_seg_of_its_seg_nrrd(tmp_path, capsys):
    ct, liver, slice_of_uid = write_ct_series(tmp_path / "ct", "descending")
    mask = io.write_image(geometry.copy_geometry(liver.astype(np.uint8), io.read_image(tmp_path / "ct")),
                          tmp_path / "liver.nii.gz")
    out = tmp_path / "out"
    assert cli.main(run_argv(tmp_path / "ct", mask, out)) == 0
    printed = capsys.readouterr().out
    assert "segmentation.dcm" in printed and "No DICOM SEG" not in printed
    assert "segmentation.dcm" in json.loads((out / "run.json").read_text())["files"]

    _, nrrd_segments = segfile.read_seg_nrrd(out / "segmentation.seg.nrrd")
    seg = pydicom.dcmread(out / "segmentation.dcm")
    assert [item.SegmentLabel for item in seg.SegmentSequence] == [s["name"] for s in nrrd_segments]
    assert sorted(i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) \
        == sorted(slice_of_uid)
    volumes = frames_by_slice(seg, slice_of_uid, liver.shape)
    np.testing.assert_array_equal(volumes[1], liver)  # the liver segment is the mask given, slice for slice
    for number, (item, segment) in enumerate(zip(seg.SegmentSequence, nrrd_segments), start=1):
        assert code_of(item.SegmentedPropertyTypeCodeSequence[0]) == segment["terminology"]["type"]
        assert code_of(item.SegmentedPropertyCategoryCodeSequence[0]) == segment["terminology"]["category"]
        np.testing.assert_array_equal(volumes.get(number, np.zeros(liver.shape, bool)), segment["mask"],
                                      err_msg=segment["name"])


def test_a_nifti_input_writes_no_seg_and_no_highdicom_only_notes_it(tmp_path, capsys, monkeypatch):
    ct, liver, _ = write_ct_series(tmp_path / "ct", "ascending")
    reference = io.read_image(tmp_path / "ct")
    nifti = io.write_image(reference, tmp_path / "ct.nii.gz")
    mask = io.write_image(geometry.copy_geometry(liver.astype(np.uint8), reference), tmp_path / "liver.nii.gz")
    assert cli.main(run_argv(nifti, mask, tmp_path / "from_nifti")) == 0
    assert (tmp_path / "from_nifti" / "segmentation.seg.nrrd").exists()
    assert not (tmp_path / "from_nifti" / "segmentation.dcm").exists()
    capsys.readouterr()

    real = dependencies.is_installed
    monkeypatch.setattr(dependencies, "is_installed", lambda p: p is not dependencies.HIGHDICOM and real(p))
    out = tmp_path / "without_highdicom"
    assert cli.main(run_argv(tmp_path / "ct", mask, out)) == 0
    assert "Note: No DICOM SEG (segmentation.dcm): it needs the Python package 'highdicom'" in capsys.readouterr().out
    assert (out / "segmentation.seg.nrrd").exists() and not (out / "segmentation.dcm").exists()
    assert any("highdicom" in w for w in json.loads((out / "report.json").read_text())["warnings"])


def test_run_help_names_the_dicom_seg(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "segmentation.dcm" in " ".join(capsys.readouterr().out.split())
