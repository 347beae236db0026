"""Landmarks proposed from the CT (landmarks.py, issue 29): phantoms, honest failure, the CLI, the real cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from LiverLocalizationLib import cli, io
from LiverLocalizationLib.landmarks import LANDMARK_ORDER, propose_landmarks
from LiverLocalizationLib.phantom import generate_phantom, write_phantom

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(1, size="small")


def test_phantom_ivc_found_near_truth(phantom):
    liver = sitk.Cast(phantom.truth_couinaud > 0, sitk.sitkUInt8)
    proposed = propose_landmarks(phantom.ct, liver)
    for name in ("IVC", "IVC_inferior"):
        assert name in proposed.points, proposed.missing
        assert np.linalg.norm(proposed.points[name] - phantom.landmarks[name]) < 10.0
        assert 0.0 < proposed.confidence[name] <= 1.0 and proposed.reasons[name]
    # every landmark is either proposed or reported missing with a reason
    assert set(proposed.points) | set(proposed.missing) == set(LANDMARK_ORDER)
    assert all(proposed.missing.values())


def test_no_vessels_reported_missing_with_reason():
    arr = np.full((40, 60, 60), -1000.0, np.float32)  # air round a block of liver-like tissue: no vessel at all
    arr[5:35, 10:50, 10:50] = 110.0
    ct = sitk.GetImageFromArray(arr)
    ct.SetSpacing((2.0, 2.0, 2.0))
    mask = sitk.GetImageFromArray((arr > 0).astype(np.uint8))
    mask.CopyInformation(ct)
    proposed = propose_landmarks(ct, mask)
    assert not proposed.points
    assert set(proposed.missing) == set(LANDMARK_ORDER)
    assert "IVC" in proposed.missing and "tube" in proposed.missing["IVC"]


def test_cli_writes_markups_read_back(tmp_path, phantom, capsys):
    write_phantom(phantom, tmp_path / "ph")
    out = tmp_path / "proposed.mrk.json"
    assert cli.main(["-q", "landmarks", str(tmp_path / "ph" / "ct.nii.gz"), "--liver-mask",
                     str(tmp_path / "ph" / "truth_couinaud.nii.gz"), "--out", str(out)]) == 0
    points = io.read_markups(out)
    assert "IVC" in points and np.linalg.norm(points["IVC"] - phantom.landmarks["IVC"]) < 10.0
    doc = json.loads(out.read_text())
    assert doc["markups"][0]["coordinateSystem"] == "LPS"
    assert all("confidence" in cp["description"] for cp in doc["markups"][0]["controlPoints"])
    assert "not found" in capsys.readouterr().out  # the hepatic veins, with their reason


def test_cli_bad_input_exit_2(tmp_path, capsys):
    assert cli.main(["-q", "landmarks", str(tmp_path / "none.nii.gz"), "--out", str(tmp_path / "p.mrk.json")]) == 2
    assert cli.main(["-q", "landmarks", str(tmp_path), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("liverloc landmarks: error:") for line in err)


# distances measured on 2026-12-07 (docs/validation.md, "Proposed landmarks"), bounds with a margin of ~3 mm
REAL_BOUNDS_MM = {"ircadb1_1": {"IVC": 24.0, "IVC_inferior": 24.0, "LPV": 19.0},
                  "lits117": {"IVC": 22.0, "LPV": 21.0}}


@pytest.mark.parametrize("case", sorted(REAL_BOUNDS_MM))
def test_real_case_distances(case):
    folder = DATA / case
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared real data)")
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    liver = sitk.ReadImage(str(folder / "mask_liver.nii.gz"))
    reference = io.read_markups(folder / "landmarks.mrk.json")
    proposed = propose_landmarks(ct, liver)
    for name, bound in REAL_BOUNDS_MM[case].items():
        assert name in proposed.points, proposed.missing
        assert np.linalg.norm(proposed.points[name] - reference[name]) < bound
