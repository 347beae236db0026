"""DICOM folders: a series is read only when its slices make one regular grid, and only the series asked for.

Small synthetic series are written with SimpleITK (dicom_series.py), each slice's geometry set in its own header,
so that a slice can be duplicated, left out, turned or shifted exactly as a damaged export would be.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_series import AXIAL, CORNER, CORONAL, OTHER_UID, SPACING, STEP, UID, slice_values, write_series
from LiverLocalizationLib import cli, io
from LiverLocalizationLib.errors import InputError


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def refused(folder: Path, *patterns: str, **kwargs) -> str:
    """Read the folder expecting InputError whose one-line message holds every pattern; the files stay unchanged."""
    before = checksums(folder)
    with pytest.raises(InputError) as info:
        io.read_image(folder, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, message
    assert checksums(folder) == before
    return message


@pytest.mark.parametrize("orientation", [AXIAL, CORONAL], ids=["axial", "coronal"])
@pytest.mark.parametrize("file_order", ["ascending", "descending"])
def test_a_good_series_reads_with_exactly_its_geometry(tmp_path, orientation, file_order):
    heights = [STEP * k for k in range(10)]
    if file_order == "descending":
        heights = heights[::-1]
    write_series(tmp_path / "ct", heights, orientation)
    image = io.read_image(tmp_path / "ct")
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    assert image.GetSize() == (12, 12, 10)
    np.testing.assert_allclose(image.GetSpacing(), (SPACING, SPACING, STEP), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), CORNER, atol=1e-6)  # the lowest slice, whatever the file order
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.column_stack([row, column, normal]),
                               atol=1e-6)
    values = sitk.GetArrayFromImage(image)
    for z, height in enumerate(sorted(heights)):
        np.testing.assert_array_equal(values[z], slice_values(heights.index(height)))


def test_a_duplicated_slice_is_refused_naming_both_files(tmp_path):
    heights = [STEP * k for k in range(10)]
    write_series(tmp_path / "ct", heights[:5] + [heights[4]] + heights[5:])
    refused(tmp_path / "ct", "1 pair of slices at the same place", "slice004.dcm and slice005.dcm at z=110 mm",
            "Remove the extra files")


def test_a_missing_slice_is_refused_naming_where_the_step_changes(tmp_path):
    """ITK reads this folder with spacing 2.8125 mm (the slices spread evenly from first to last): 12 % too long."""
    heights = [STEP * k for k in range(10)]
    write_series(tmp_path / "ct", heights[:5] + heights[6:])
    refused(tmp_path / "ct", "not evenly spaced", "between z=110 and z=115 mm (slice004.dcm, slice005.dcm) the step "
            "is 5 mm (1 slice missing?); elsewhere 2.5 mm", "Copy the whole series again")


def test_a_step_off_by_more_than_the_tolerance_is_refused_and_rounding_is_not(tmp_path):
    heights = [STEP * k for k in range(10)]
    write_series(tmp_path / "rounded", [h + (0.004 if k % 2 else 0.0) for k, h in enumerate(heights)])
    np.testing.assert_allclose(io.read_image(tmp_path / "rounded").GetSpacing()[2], STEP, atol=0.01)
    write_series(tmp_path / "uneven", heights[:7] + [h + 0.5 for h in heights[7:]])
    refused(tmp_path / "uneven", "the step is 3 mm;", "elsewhere 2.5 mm")


def test_two_series_are_refused_listing_both_and_series_uid_picks_each(tmp_path):
    folder = tmp_path / "two"
    write_series(folder, [STEP * k for k in range(10)], description="portal venous")
    write_series(folder, [4.0 * k for k in range(4)], uid=OTHER_UID, description="scout", prefix="other")
    refused(folder, "2 DICOM series in one folder", f"{UID} (10 slices, CT, 'portal venous')",
            f"{OTHER_UID} (4 slices, CT, 'scout')", "--series UID")
    first = io.read_image(folder, series_uid=UID)
    assert first.GetSize()[2] == 10 and first.GetSpacing()[2] == pytest.approx(STEP)
    second = io.read_image(folder, series_uid=OTHER_UID)
    assert second.GetSize()[2] == 4 and second.GetSpacing()[2] == pytest.approx(4.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(second)[3], slice_values(3))
    refused(folder, "no DICOM series with SeriesInstanceUID '1.2.3'", UID, OTHER_UID, series_uid="1.2.3")


def test_liverloc_run_with_an_unknown_series_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "two"
    write_series(folder, [STEP * k for k in range(10)])
    write_series(folder, [4.0 * k for k in range(4)], uid=OTHER_UID, prefix="other")
    before = checksums(folder)
    out = tmp_path / "out"
    assert cli.main(["-q", "run", str(folder), "--series", "9.9.9", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no DICOM series with SeriesInstanceUID '9.9.9'" in err and OTHER_UID in err
    assert cli.main(["-q", "run", str(folder), "--out", str(out)]) == 2
    assert "2 DICOM series in one folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]  # no --out, no lock, no partial folder
    assert checksums(folder) == before
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkInt16), str(ct))
    assert cli.main(["-q", "run", str(ct), "--series", UID, "--out", str(out)]) == 2
    assert "--series picks a series in a DICOM folder" in capsys.readouterr().err
    assert not out.exists()


def test_run_help_names_the_series_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "--series UID" in capsys.readouterr().out


def test_mixed_orientations_are_refused(tmp_path):
    tilted = (1.0, 0.0, 0.0, 0.0, np.cos(0.1), np.sin(0.1))
    write_series(tmp_path / "ct", [STEP * k for k in range(10)], orientations=[AXIAL] * 6 + [tilted] * 4)
    refused(tmp_path / "ct", "different orientations", "[1, 0, 0, 0, 1, 0] in slice000.dcm", "in slice006.dcm")


def test_a_one_slice_folder_is_refused(tmp_path):
    write_series(tmp_path / "ct", [0.0])
    refused(tmp_path / "ct", "one slice (slice000.dcm): a 2-D image")


def test_gantry_tilt_is_refused(tmp_path):
    """Positions drift along y by tan(10°) of the height: ITK would stack the slices straight above the first."""
    heights = [STEP * k for k in range(10)]
    sideways = [(0.0, h * np.tan(np.radians(10.0)), 0.0) for h in heights]
    write_series(tmp_path / "ct", heights, sideways=sideways)
    refused(tmp_path / "ct", "not stacked along their normal (at 10.00° to it: gantry tilt", "slice009.dcm lies 3.97 mm")


def test_a_volume_whose_geometry_differs_from_the_headers_is_refused(tmp_path, monkeypatch):
    """The last guard: ITK's volume must carry the step measured on the headers."""
    write_series(tmp_path / "ct", [STEP * k for k in range(10)])
    read = io._read_dicom_files

    def other_spacing(folder, files):
        image = read(folder, files)
        image.SetSpacing((SPACING, SPACING, 3.0))
        return image

    monkeypatch.setattr(io, "_read_dicom_files", other_spacing)
    refused(tmp_path / "ct", "the volume read has 10 slices 3 mm apart", "the headers give 10 slices 2.5 mm apart")


def test_series_uid_with_an_image_file_is_refused(tmp_path):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkInt16), str(ct))
    with pytest.raises(InputError, match="a file, not a DICOM folder"):
        io.read_image(ct, series_uid=UID)
