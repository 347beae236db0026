"""Input integrity (issue 32): nothing silently wrong, nothing lost.

Each case writes a small bad input into tmp_path and checks that it is refused with one clear message naming the
problem (InputError, or exit status 2 from `liverloc` with no traceback), that the inputs are unchanged and that no
output is written. Valid files of every format are read as before (no false refusal).
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverLocalizationLib import cli, couinaud, io, pipeline
from LiverLocalizationLib.errors import InputError
from LiverLocalizationLib.phantom import files_not_written_by_phantom, phantom_folder_problem
from cli_checks import assert_one_clear_line, run_cli

LANDMARKS = {"IVC": [0.0, 40.0, 10.0], "RHV": [-60.0, 30.0, 20.0], "MHV": [-20.0, 10.0, 20.0],
             "LHV": [30.0, 20.0, 20.0], "RPV": [-40.0, 20.0, -20.0], "LPV": [10.0, 10.0, -20.0]}


# ----------------------------------------------------------------------------- helpers

def ct_array(shape=(16, 32, 32), dtype=np.int16) -> np.ndarray:
    """A small CT-like volume [z, y, x]: air round a 100 HU block, with a little structure so nothing is constant."""
    arr = np.full(shape, -1000, dtype)
    arr[3:-3, 6:-6, 6:-6] = 100
    arr[6:9, 12:16, 12:16] = 40
    return arr


def write(arr: np.ndarray, path: Path, compress: bool = True, spacing=(1.0, 1.0, 2.0)) -> Path:
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), compress)
    return path


def snapshot(*paths: Path) -> dict:
    """Bytes and modification time of files, to show that a refused command left its inputs as they were."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


# ----------------------------------------------------------------------------- cut short and corrupt files

@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_a_truncated_nifti_gz_is_refused_as_cut_short_naming_the_file(tmp_path, fraction, capsys):
    """ITK reads the first part of a cut .nii.gz and fills the rest with 0 (a 'liver' of another size, exit 0);
    the file is now refused, by read_image and by liverloc run before any work."""
    good = write(ct_array(), tmp_path / "good.nii.gz")
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * fraction)])
    # the behaviour being guarded against: ITK itself still reads it
    assert sitk.ReadImage(str(cut)).GetSize() == (32, 32, 16)
    with pytest.raises(InputError, match=r"cut\.nii\.gz: the file is cut short") as info:
        io.read_image(cut)
    assert "end-of-stream" in str(info.value) and "again" in str(info.value)
    before = snapshot(cut)
    out = tmp_path / "out"
    code, err = run_cli(["-q", "run", str(cut), "--out", str(out)], capsys)
    assert code == 2
    assert_one_clear_line(err, str(cut), "cut short")
    assert snapshot(cut) == before and not out.exists()


def test_an_uncompressed_nifti_cut_short_is_refused_with_the_sizes(tmp_path):
    good = write(ct_array(), tmp_path / "good.nii", compress=False)
    cut = tmp_path / "cut.nii"
    cut.write_bytes(good.read_bytes()[:-1000])
    expected = 16 * 32 * 32 * 2
    with pytest.raises(InputError, match=f"describes {expected} bytes of voxel data, the file holds {expected - 1000}"):
        io.read_image(cut)


@pytest.mark.parametrize("where", ["middle", "checksum"])
def test_a_corrupt_gzip_is_reported_as_corrupt_not_as_not_ct(tmp_path, where, capsys):
    data = bytearray(write(ct_array(), tmp_path / "good.nii.gz").read_bytes())
    if where == "middle":
        for i in range(len(data) // 2, len(data) // 2 + 16):
            data[i] ^= 0xFF
    else:
        data[-6] ^= 0xFF  # a byte of the gzip trailer's CRC-32: the voxels themselves decompress
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bad\.nii\.gz: the file is corrupt"):
        io.read_image(bad)
    code, err = run_cli(["-q", "run", str(bad), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert_one_clear_line(err, "corrupt")
    assert "does not look like CT" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("compress", [True, False])
def test_a_truncated_nrrd_or_metaimage_is_refused_as_cut_short(tmp_path, suffix, compress):
    good = write(ct_array(), tmp_path / f"good{suffix}", compress=compress)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.7)])
    with pytest.raises(InputError, match=f"cut{suffix}: the file is cut short"):
        io.read_image(cut)


def test_valid_files_of_every_format_read_exactly_as_itk_reads_them(tmp_path):
    """No false refusal: int and float volumes in every format, an oblique direction, a gzip stream in two members
    (as bgzip and pigz write), compressed and raw."""
    arr = ct_array()
    oblique = sitk.GetImageFromArray(arr.astype(np.float32))
    oblique.SetSpacing((0.8, 0.8, 2.5))
    oblique.SetDirection(sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix())
    cases = []
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        for compress in (True, False):
            cases.append(write(arr, tmp_path / f"int{compress}{suffix}", compress))
            path = tmp_path / f"oblique{compress}{suffix}"
            sitk.WriteImage(oblique, str(path), compress)
            cases.append(path)
    raw = gzip.decompress((tmp_path / "intTrue.nii.gz").read_bytes())
    members = tmp_path / "members.nii.gz"
    members.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    cases.append(members)
    for path in cases:
        image = io.read_image(path)
        reference = sitk.ReadImage(str(path))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))
        np.testing.assert_allclose(image.GetDirection(), reference.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(members)), arr)


# ----------------------------------------------------------------------------- NaN and inf

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_nan_and_inf_voxels_are_refused_in_every_format_with_their_count(tmp_path, suffix):
    arr = ct_array(dtype=np.float32)
    arr[2, 3, 4] = np.nan
    arr[5, 6, 7] = np.nan
    arr[8, 9, 10] = -np.inf
    path = write(arr, tmp_path / f"holes{suffix}")
    before = snapshot(path)
    with pytest.raises(InputError, match=r"3 of 16384 voxels are not numbers \(2 NaN, 1 infinite\)") as info:
        io.read_image(path)
    assert path.name in str(info.value) and "Fill them" in str(info.value)
    assert snapshot(path) == before


def test_nifti_nan_is_read_as_zero_by_itk_so_it_is_counted_on_the_file(tmp_path):
    """The reason for counting on the bytes: ITK's NIfTI reader turns NaN into 0 without a word."""
    arr = ct_array(dtype=np.float32)
    arr[2, 3, 4] = np.nan
    path = write(arr, tmp_path / "nan.nii.gz")
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()
    with pytest.raises(InputError, match=r"1 of 16384 voxels are not numbers \(1 NaN, 0 infinite\)"):
        io.read_image(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_an_all_nan_file_says_nan_not_constant(tmp_path, suffix, capsys):
    path = write(np.full((16, 32, 32), np.nan, np.float32), tmp_path / f"allnan{suffix}")
    with pytest.raises(InputError, match=r"every voxel \(16384\) is NaN") as info:
        io.read_image(path)
    assert "constant" not in str(info.value)
    code, err = run_cli(["-q", "run", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert_one_clear_line(err, "NaN")
    assert "constant" not in err
    with pytest.raises(InputError, match="NaN everywhere"):
        io.validate_ct(sitk.GetImageFromArray(np.full((16, 32, 32), np.nan, np.float32)))


# ----------------------------------------------------------------------------- sheared grids

def test_a_sheared_nifti_sform_is_refused_where_itk_would_silently_use_the_qform(tmp_path):
    path = write(ct_array(), tmp_path / "plain.nii", compress=False)
    header = bytearray(path.read_bytes())
    srow = list(struct.unpack_from("<12f", header, 280))
    srow[1] = 0.5  # x also moves with j: a 63° angle between the first two axes
    struct.pack_into("<12f", header, 280, *srow)
    sheared = tmp_path / "sheared.nii"
    sheared.write_bytes(bytes(header))
    sheared_gz = tmp_path / "sheared.nii.gz"
    sheared_gz.write_bytes(gzip.compress(bytes(header)))
    assert sitk.ReadImage(str(sheared)).GetDirection() == sitk.ReadImage(str(path)).GetDirection()  # ITK's fallback
    for bad in (sheared, sheared_gz):
        with pytest.raises(InputError, match=r"sform is not orthonormal \(axes at 63\.4° instead of 90°"):
            io.read_image(bad)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_a_sheared_direction_matrix_is_refused(tmp_path, suffix):
    image = sitk.GetImageFromArray(ct_array())
    image.SetDirection((1.0, 0.2, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / f"sheared{suffix}"
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputError, match="direction matrix is not orthonormal .*Resample"):
        io.read_image(path)


# ----------------------------------------------------------------------------- landmarks

def fcsv(path: Path, rows: list[tuple[str, list]], system: str = "LPS") -> Path:
    lines = ["# Markups fiducial file version = 4.11", f"# CoordinateSystem = {system}",
             "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"]
    for i, (label, p) in enumerate(rows, start=1):
        lines.append(f"{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,{label},,")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_an_fcsv_with_a_label_twice_is_refused_like_the_json_reader(tmp_path):
    path = fcsv(tmp_path / "dup.fcsv", [("IVC", [1, 2, 3]), ("RHV", [4, 5, 6]), ("IVC", [7, 8, 9])])
    before = snapshot(path)
    with pytest.raises(InputError, match="'IVC' appears twice"):
        io.read_markups(path)
    assert snapshot(path) == before


def test_landmark_labels_are_matched_whatever_their_case_and_spaces(tmp_path):
    rows = [("rhv ", [1, 2, 3]), (" Ivc", [4, 5, 6]), ("ivc inferior", [7, 8, 9]), ("my note", [0, 0, 0])]
    marks = io.read_markups(fcsv(tmp_path / "loose.fcsv", rows))
    assert set(marks) == {"RHV", "IVC", "IVC_inferior", "my note"}
    np.testing.assert_allclose(marks["RHV"], [1, 2, 3])
    with pytest.raises(InputError, match=r"'RHV' appears twice \(as 'RHV' and 'rhv'\)"):
        io.read_markups(fcsv(tmp_path / "twice.fcsv", [("RHV", [1, 2, 3]), ("rhv", [4, 5, 6])]))


def test_a_missing_landmark_message_names_the_labels_found():
    given = {("RHV_typo" if k == "RHV" else k): np.asarray(v) for k, v in LANDMARKS.items()}
    with pytest.raises(InputError, match=r"missing: RHV \(labels found: 'IVC', 'RHV_typo', 'MHV'"):
        couinaud.check_landmarks(given)


BAD_MARKUPS = {
    "markups is an object": ({"markups": {"type": "Fiducial"}}, "'markups' is an object, not a list"),
    "markup is a string": ({"markups": ["Fiducial"]}, r"markups\[0\] is a string, not an object"),
    "controlPoints is a number": ({"markups": [{"controlPoints": 3}]}, r"controlPoints is a number, not a list"),
    "control point is a list": ({"markups": [{"controlPoints": [[1, 2, 3]]}]}, r"controlPoints\[0\] is a list"),
    "position is a string": ({"markups": [{"controlPoints": [{"label": "IVC", "position": "1,2,3"}]}]},
                             "'IVC' has an invalid position '1,2,3'"),
    "position has strings": ({"markups": [{"controlPoints": [{"label": "IVC", "position": ["1", 2, 3]}]}]},
                             "'IVC' has an invalid position"),
    "position has true": ({"markups": [{"controlPoints": [{"label": "IVC", "position": [True, 2, 3]}]}]},
                           "'IVC' has an invalid position"),
    "label is a list": ({"markups": [{"controlPoints": [{"label": ["IVC"], "position": [1, 2, 3]}]}]},
                        "the label of control point 1 is a list, not a string"),
    "coordinate system is a number": ({"markups": [{"coordinateSystem": 0, "controlPoints": []}]},
                                      "unknown coordinateSystem 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_MARKUPS))
def test_wrong_json_types_in_a_markups_file_give_a_clear_input_error(tmp_path, case):
    doc, message = BAD_MARKUPS[case]
    path = tmp_path / "bad.mrk.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match=message) as info:
        io.read_markups(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError):
        io.read_lesion_points(path)


def test_an_fcsv_position_that_is_not_numbers_gives_a_clear_input_error(tmp_path):
    path = fcsv(tmp_path / "text.fcsv", [("IVC", [1, 2, 3]), ("RHV", ["a", 5, 6])])
    with pytest.raises(InputError, match="line 5: the position 'a,5,6' is not 3 finite numbers"):
        io.read_markups(path)


# ----------------------------------------------------------------------------- liver masks

def test_a_liver_mask_covering_the_image_is_refused_before_any_work(tmp_path, capsys):
    ct = write(ct_array(), tmp_path / "ct.nii.gz")
    mask = write(np.ones((16, 32, 32), np.uint8), tmp_path / "everything.nii.gz")
    before = snapshot(ct, mask)
    out = tmp_path / "out"
    code, err = run_cli(["-q", "run", str(ct), "--liver-mask", str(mask), "--no-classify", "--out", str(out)], capsys)
    assert code == 2
    assert_one_clear_line(err, "covers 100% of the image", "not inverted")
    assert snapshot(ct, mask) == before and not out.exists()


def test_liver_mask_extent_limits_refuse_most_of_the_image_or_more_than_six_litres():
    pipeline.check_liver_mask_extent(29, 100, 1000.0)  # a liver in a LiTS-like crop: 29 %, 29 ml
    pipeline.check_liver_mask_extent(1_500_000, 60_000_000, 1.0)  # 1.5 l in a whole-body CT
    with pytest.raises(InputError, match="covers 51% of the image"):
        pipeline.check_liver_mask_extent(51, 100, 1.0)
    with pytest.raises(InputError, match=r"covers 10% of the image \(7\.0 l\)"):
        pipeline.check_liver_mask_extent(7_000_000, 70_000_000, 1.0)


# ----------------------------------------------------------------------------- command line

BAD_OPTIONS = [
    (["run", "CT", "--min-lesion-mm3", "nan"], "--min-lesion-mm3: 'nan' is not finite"),
    (["run", "CT", "--min-lesion-mm3", "-5"], "--min-lesion-mm3: '-5' is out of range"),
    (["run", "CT", "--lesion-false-alarms", "inf"], "--lesion-false-alarms: 'inf' is not finite"),
    (["run", "CT", "--lesion-false-alarms", "11"], "--lesion-false-alarms: '11' is out of range; use a finite number from 0 to 10"),
    (["run", "CT", "--median-radius-mm", "0"], "--median-radius-mm: '0' is out of range"),
    (["run", "CT", "--classes", "1"], "--classes: '1' is out of range; use an integer from 2 to 8"),
    (["run", "CT", "--classes", "3.5"], "--classes: '3.5' is not an integer"),
    (["run", "CT", "--liver-label", "nan"], "--liver-label: 'nan' is not finite"),
    (["phantom", "--seed", "-1"], "--seed: '-1' is out of range"),
    (["phantom", "--lesions", "13"], "--lesions: '13' is out of range"),
    (["train", "--cases", "2"], "--cases: '2' is out of range"),
    (["evaluate-classifier", "--cases", "0"], "--cases: '0' is out of range"),
]


@pytest.mark.parametrize("argv,message", BAD_OPTIONS, ids=[" ".join(a for a in argv if a != "CT") for argv, _ in BAD_OPTIONS])
def test_numeric_options_are_refused_at_parse_time_with_exit_2(tmp_path, argv, message, capsys):
    ct = write(ct_array(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    argv = [str(ct) if a == "CT" else a for a in argv]
    code, err = run_cli(["-q", *argv, "--out", str(out)], capsys)
    assert code == 2
    assert_one_clear_line(err, message, "--help")
    assert not out.exists()


def test_an_out_that_is_a_file_or_lies_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    ct = write(ct_array(), tmp_path / "ct.nii.gz")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine", encoding="utf-8")
    before = snapshot(ct, a_file)
    for out, message in ((a_file, "is a file; name a folder"), (a_file / "sub", "which is a file")):
        for argv in (["run", str(ct)], ["phantom"], ["train"], ["evaluate-classifier"]):
            code, err = run_cli(["-q", *argv, "--out", str(out)], capsys)
            assert code == 2, argv
            assert_one_clear_line(err, f"--out {out}", message)
    assert snapshot(ct, a_file) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write into any folder")
def test_an_out_in_a_read_only_folder_is_refused_before_any_work(tmp_path, capsys):
    ct = write(ct_array(), tmp_path / "ct.nii.gz")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = run_cli(["-q", "run", str(ct), "--out", str(locked / "result")], capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2
    assert_one_clear_line(err, "is not writable")
    assert not (locked / "result").exists()


def test_out_folder_problem_accepts_new_and_existing_folders(tmp_path):
    assert cli.out_folder_problem(tmp_path) is None
    assert cli.out_folder_problem(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()  # nothing is created by the check


@pytest.mark.parametrize("option", ["CT", "--landmarks", "--liver-mask"])
def test_an_input_inside_out_is_refused_before_any_work(tmp_path, option, capsys):
    """`liverloc run DIR/denoised.nii.gz --out DIR` would overwrite its own input."""
    folder = tmp_path / "previous"
    folder.mkdir()
    ct = write(ct_array(), folder / "denoised.nii.gz" if option == "CT" else tmp_path / "ct.nii.gz")
    marks = io.write_markups(folder / "landmarks.mrk.json", {k: np.asarray(v) for k, v in LANDMARKS.items()})
    mask = write(np.zeros((16, 32, 32), np.uint8), folder / "liver.nii.gz")
    argv = ["-q", "run", str(ct), "--out", str(folder)]
    argv += {"CT": [], "--landmarks": ["--landmarks", str(marks)], "--liver-mask": ["--liver-mask", str(mask)]}[option]
    files = sorted(folder.iterdir())
    before = snapshot(*files)
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert_one_clear_line(err, f"{option} ", "lies in the --out folder", "Choose another --out folder")
    assert sorted(folder.iterdir()) == files and snapshot(*files) == before


def test_a_missing_input_is_refused_before_any_work(tmp_path, capsys):
    ct = write(ct_array(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    code, err = run_cli(["-q", "run", str(ct), "--weights", str(tmp_path / "none.safetensors"), "--out", str(out)],
                        capsys)
    assert code == 2
    assert_one_clear_line(err, "--weights", "no such file")
    assert not out.exists()


def test_truth_that_is_not_a_phantom_folder_is_refused_before_any_work(tmp_path, capsys):
    ct = write(ct_array(), tmp_path / "ct.nii.gz")
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    for name in ("truth_couinaud.nii.gz", "truth_lesions.nii.gz"):
        write(np.zeros((16, 32, 32), np.uint8), other / name)
    (other / "truth.json").write_text(json.dumps({"patient": "someone"}), encoding="utf-8")
    out = tmp_path / "out"
    for folder, message in ((empty, "is not a phantom folder (no truth.json"),
                            (other, "was not written by `liverloc phantom`"),
                            (ct, "is not a folder")):
        assert phantom_folder_problem(folder) is not None
        code, err = run_cli(["-q", "run", str(ct), "--truth", str(folder), "--out", str(out)], capsys)
        assert code == 2
        assert_one_clear_line(err, "--truth", message)
        assert not out.exists()


def test_phantom_replaces_only_its_own_files(tmp_path, capsys):
    """A user's ct.nii.gz is never replaced; a folder written by phantom can be written again; a phantom file edited
    since is the user's."""
    users = tmp_path / "users"
    users.mkdir()
    mine = write(ct_array(), users / "ct.nii.gz")
    before = snapshot(mine)
    code, err = run_cli(["-q", "phantom", "--seed", "1", "--lesions", "0", "--out", str(users)], capsys)
    assert code == 2
    assert_one_clear_line(err, "holds ct.nii.gz, not written by liverloc phantom")
    assert snapshot(mine) == before and sorted(users.iterdir()) == [mine]

    case = tmp_path / "case"
    assert run_cli(["-q", "phantom", "--seed", "1", "--lesions", "0", "--out", str(case)], capsys)[0] == 0
    assert files_not_written_by_phantom(case) == []  # a rerun into it may replace every file
    (case / "notes.txt").write_text("kept", encoding="utf-8")
    assert files_not_written_by_phantom(case) == []
    write(ct_array(), case / "truth_lesions.nii.gz")  # edited by the user since
    assert files_not_written_by_phantom(case) == ["truth_lesions.nii.gz"]
    (case / "truth.json").write_text("{}", encoding="utf-8")
    assert set(files_not_written_by_phantom(case)) == {"ct.nii.gz", "truth_tissue.nii.gz", "truth_couinaud.nii.gz",
                                                        "truth_lesions.nii.gz", "landmarks.mrk.json", "truth.json"}


def test_help_states_the_output_rules(capsys):
    for command, words in (("phantom", ("SHA-256", "never touched")), ("run", ("hold none of the inputs",))):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for word in words:
            assert word in text


def test_a_path_with_bytes_that_are_not_utf8_is_refused_before_the_image_library_aborts(tmp_path, capsys):
    """SimpleITK aborts the whole process (std::logic_error, no Python exception) on a path holding bytes that are
    not UTF-8 text, which Linux file names may hold: read_image and write_image refuse it, and liverloc run and
    phantom stop before any work with one line naming it (\\xff shown), for the CT and for --out."""
    good = write(ct_array(), tmp_path / "good.nii.gz")
    odd = tmp_path / os.fsdecode(b"ct\xff.nii.gz")
    try:
        odd.write_bytes(good.read_bytes())
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem does not take names that are not UTF-8")
    with pytest.raises(InputError, match=r"ct\\xff\.nii\.gz: the path holds bytes that are not UTF-8"):
        io.read_image(odd)
    with pytest.raises(InputError, match="not UTF-8"):
        io.write_image(io.read_image(good), tmp_path / os.fsdecode(b"out\xfe") / "x.nii.gz")
    code, err = run_cli(["-q", "run", str(odd), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert_one_clear_line(err, "ct\\xff.nii.gz", "not UTF-8", "rename")
    odd_out = tmp_path / os.fsdecode(b"out\xfe")
    code, err = run_cli(["-q", "run", str(good), "--out", str(odd_out)], capsys)
    assert code == 2
    assert_one_clear_line(err, "--out", "out\\xfe", "not UTF-8")
    code, err = run_cli(["-q", "phantom", "--out", str(odd_out)], capsys)
    assert code == 2
    assert_one_clear_line(err, "--out", "not UTF-8")
    assert not odd_out.exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- found by a hostile round (2026-12-07)

def run_subprocess(argv: list, cwd: Path):
    """liverloc in its own process, so that what ITK prints on file descriptor 2 is seen as a user sees it."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "utf-8",  # the messages hold "×" whatever the machine's locale
           "PYTHONPATH": os.pathsep.join([str(Path(io.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "LiverLocalizationLib.cli", "-q", *map(str, argv)], cwd=cwd,
                          env=env, capture_output=True, encoding="utf-8", timeout=120)


def test_itk_prints_nothing_beside_the_one_line_error(tmp_path):
    """ITK, MetaIO and GDCM print their own lines (a C++ source path, "Cannot open data file", "No Series were
    found") on the process's stderr; the user sees only liverloc's line, exit status 2, and nothing is written."""
    header = "ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\nElementDataFile = {}\n"
    (tmp_path / "lost.mhd").write_text(header.format("lost.raw"), encoding="utf-8")
    (tmp_path / "empty").mkdir()
    arr = ct_array()
    write(arr, tmp_path / "ct.nii", compress=False)
    data = bytearray((tmp_path / "ct.nii").read_bytes())
    struct.pack_into("<f", data, 80, 0.0)  # pixdim[1]: ITK warns ("unexpected scales in sform") and reads 1 mm
    (tmp_path / "zero.nii").write_bytes(bytes(data))
    expected = {"lost.mhd": "its voxel data file lost.raw (the header's 'ElementDataFile') is not there",
                "empty": "a folder with no DICOM series in it",
                "zero.nii": "the header's voxel spacing (pixdim) is 0×1×2; a spacing of 0 mm would be read as 1 mm"}
    for name, message in expected.items():
        result = run_subprocess(["run", name, "--out", "out"], tmp_path)
        assert result.returncode == 2, result.stderr
        assert_one_clear_line(result.stderr, "liverloc run: error:", message)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_a_detached_data_file_missing_or_short_is_named(tmp_path, suffix):
    arr = ct_array()
    image = write(arr, tmp_path / f"ct{suffix}", compress=False)
    data = next(p for p in tmp_path.iterdir() if p != image)
    assert np.array_equal(sitk.GetArrayFromImage(io.read_image(image)), arr)  # a whole pair reads as ITK reads it
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(InputError, match=rf"{data.name}: the file is cut short \(the header describes {arr.nbytes} "):
        io.read_image(image)
    data.unlink()
    with pytest.raises(InputError, match=rf"its voxel data file {data.name} .* is not there"):
        io.read_image(image)


def test_an_empty_ct_file_is_named_empty(tmp_path):
    (tmp_path / "ct.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match=r"ct.nii.gz: the file is empty \(0 bytes\)"):
        io.read_image(tmp_path / "ct.nii.gz")


def test_a_landmarks_file_without_points_is_refused_not_run_without_segments(tmp_path, capsys):
    """A given --landmarks file with no placed point ran without Couinaud segments, exit 0, as if none were given."""
    ct = write(ct_array(), tmp_path / "ct.nii.gz")
    markups = tmp_path / "clicks.mrk.json"
    markups.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS",
                                                "controlPoints": []}]}), encoding="utf-8")
    before = snapshot(ct, markups)
    code, err = run_cli(["-q", "run", str(ct), "--landmarks", str(markups), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert_one_clear_line(err, "clicks.mrk.json: the file holds no placed point", "leave --landmarks out")
    assert not (tmp_path / "out").exists() and snapshot(ct, markups) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clicks.mrk.json", "ct.nii.gz"]  # no lock, no staging


def test_evaluate_classifier_names_bad_weights_not_the_seeds(tmp_path, capsys):
    """Weights without their model card were reported as 'cannot read the training seeds ... give --first-seed'."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not safetensors")
    code, err = run_cli(["-q", "evaluate-classifier", "--weights", str(weights), "--out", str(tmp_path / "out"),
                         "--cases", "1"], capsys)
    assert code == 2
    assert_one_clear_line(err, f"Model card {tmp_path / 'w.json'} is missing")
    assert "seeds" not in err and not (tmp_path / "out").exists()


def test_itk_reason_is_the_exceptions_last_line_or_unknown():
    """What an InputError quotes from ITK: its reason after the C++ source lines; an empty text does not fail."""
    from LiverLocalizationLib import io

    assert io.itk_reason(RuntimeError("/src/itkImageFileReader.hxx:135:\nCould not create IO object")) == \
        "Could not create IO object"
    assert io.itk_reason(RuntimeError("")) == "unknown reason"
