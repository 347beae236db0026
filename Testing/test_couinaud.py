"""Couinaud mapping: exact labels on a synthetic box liver, invariance under rotation, LPS/RAS markups,
landmark checks, lesion localization, and overlap with ground truth on the phantom and the real crop."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverLocalizationLib import couinaud, geometry, io, labels, segfile
from LiverLocalizationLib.errors import InputError

C = np.array([0.0, 30.0, 40.0])  # IVC at the confluence (LPS mm)


def box_landmarks() -> dict[str, np.ndarray]:
    """Hand-placed landmarks about a vertical IVC axis (x left, y posterior, z superior; LPS mm).

    Azimuths about the axis (0 = patient right, 90° = anterior): RHV 0°, MHV 45°, LHV 90°, UP ≈101°.
    Heights from IVC: RPV −40, LPV −30, UP −50, IVC_inferior −80.
    """
    return {
        "IVC": C.copy(),
        "IVC_inferior": C + [0.0, 0.0, -80.0],
        "RHV": C + [-35.0, 0.0, 0.0],
        "MHV": C + [-25.0, -25.0, 0.0],
        "LHV": C + [0.0, -35.0, 0.0],
        "UP": C + [10.0, -50.0, -50.0],
        "RPV": C + [-20.0, -20.0, -40.0],
        "LPV": C + [10.0, -25.0, -30.0],
    }


def box_liver(direction=None, centre=np.zeros(3), shift=(0.0, 0.0, 0.0)) -> sitk.Image:
    """A 180 × 180 × 150 mm block of 'liver' (2 × 2 × 2.5 mm voxels) around the landmarks, optionally rotated
    about `centre` (the image direction and origin turn together: the physical content rotates)."""
    img = sitk.Image(90, 90, 60, sitk.sitkUInt8) + 1
    img.SetSpacing((2.0, 2.0, 2.5))
    origin = np.array([-89.0, -79.0, -75.0]) + shift
    if direction is not None:
        origin = direction @ (origin - centre) + centre
        img.SetDirection(tuple(direction.ravel()))
    img.SetOrigin(tuple(origin))
    return img


def label_at(image: sitk.Image, p_lps) -> int:
    idx = np.round(geometry.lps_to_index(image, p_lps)).astype(int)
    return int(sitk.GetArrayViewFromImage(image)[idx[2], idx[1], idx[0]])


# (offset from IVC in LPS mm, expected label): each ≥ 5 mm from any border
KNOWN_POINTS = [
    ([-40.0, 10.0, 10.0], 7),  # right of the RHV half-plane, behind it, above RPV
    ([-40.0, 10.0, -60.0], 6),  # same sector below RPV
    ([-50.0, -20.0, 20.0], 8),  # between RHV (0°) and MHV (45°): 22°, above RPV
    ([-50.0, -20.0, -60.0], 5),  # same, below
    ([-30.0, -60.0, 0.0], 4),  # 63°, between MHV and LHV
    ([40.0, -20.0, 10.0], 2),  # 153°, left lateral, above LPV
    ([40.0, -20.0, -45.0], 3),  # left lateral, below LPV
    ([30.0, 50.0, 10.0], 7),  # behind the IVC, left: 239° is past the posterior cut (230.5°) → right posterior
    ([40.0, 10.0, 10.0], 2),  # left and slightly behind: 194° (< cut) → left lateral
    ([-4.0, -12.0, -20.0], 1),  # between IVC and bifurcation, within segment I's heights
    ([-4.0, -12.0, 10.0], 4),  # same place above the confluence: not segment I (azimuth 72°: IV)
    ([-4.0, -12.0, -90.0], 4),  # same place below IVC_inferior: not segment I
    ([-4.0, -12.0, -45.0], 4),  # below the bifurcation's height (-35), where the caudate process ends: not segment I
]


@pytest.mark.parametrize("offset,expected", KNOWN_POINTS)
def test_plane_labels_at_known_points(offset, expected):
    frame = couinaud.landmark_frame(box_landmarks())
    got = couinaud.plane_labels(np.asarray([C + offset], dtype=np.float32), frame)
    assert int(got[0]) == expected


def test_left_border_follows_up_below_the_lhv():
    """IV | II-III border: LHV azimuth (90°) at LHV height, UP azimuth (≈101°) at UP height, linear between."""
    frame = couinaud.landmark_frame(box_landmarks())
    assert np.degrees(frame.azimuth["UP"]) == pytest.approx(np.degrees(np.arctan2(50, -10)), abs=1e-6)
    r = 60.0
    for h, phi_deg, expected in [(5.0, 95.0, 2), (-45.0, 95.0, 4), (-45.0, 103.0, 3), (-25.0, 93.0, 4), (-25.0, 98.0, 2)]:
        # border at h=-25: 90 + (101.3 - 90) * 0.5 = 95.65°
        phi = np.radians(phi_deg)
        p = C + r * (np.cos(phi) * frame.e1 + np.sin(phi) * frame.e2) + h * frame.axis
        assert int(couinaud.plane_labels(p[None].astype(np.float32), frame)[0]) == expected, (h, phi_deg)


def test_map_couinaud_labels_whole_box_and_reports_volumes():
    liver = box_liver()
    res = couinaud.map_couinaud(liver, box_landmarks(), method="planes")
    arr = sitk.GetArrayViewFromImage(res.labels)
    assert geometry.same_geometry(res.labels, liver)
    assert res.labels.GetPixelID() == sitk.sitkUInt8
    assert arr.min() >= 1 and arr.max() <= 8  # every liver voxel labelled
    assert set(np.unique(arr)) == set(range(1, 9))
    for offset, expected in KNOWN_POINTS:
        assert label_at(res.labels, C + offset) == expected, offset
    vox_ml = 2 * 2 * 2.5 / 1000
    assert sum(res.volumes_ml.values()) == pytest.approx(arr.size * vox_ml)
    assert res.volumes_ml["I"] == pytest.approx(np.count_nonzero(arr == 1) * vox_ml)
    assert sum(res.fractions.values()) == pytest.approx(1.0)
    assert res.method == "planes" and res.missing_landmarks == []


def test_labels_rotate_with_image_and_landmarks():
    """Rotating the image grid (oblique direction) and the landmarks together labels the same voxels
    (with the IVC axis from the landmarks: the patient's axis does not turn with them)."""
    shift = (0.37, 0.61, 0.83)  # keeps voxel centres off the landmark planes, where float rounding decides
    base = couinaud.map_couinaud(box_liver(shift=shift), box_landmarks(), method="planes", axis="ivc")
    rot = np.asarray(sitk.VersorTransform((0.3, -0.5, 0.8), 0.35).GetMatrix()).reshape(3, 3)
    centre = np.array([5.0, -3.0, 7.0])
    moved = {k: rot @ (p - centre) + centre for k, p in box_landmarks().items()}
    turned = couinaud.map_couinaud(box_liver(rot, centre, shift), moved, method="planes", axis="ivc")
    a = sitk.GetArrayViewFromImage(base.labels)
    b = sitk.GetArrayViewFromImage(turned.labels)
    differ = int(np.count_nonzero(a != b))
    assert differ <= 0.0001 * a.size  # measured 0 of 486000; float32 rounding could flip a centre lying on a border
    for name in base.fractions:
        assert turned.fractions[name] == pytest.approx(base.fractions[name], abs=1e-3)


def test_oblique_grid_gives_the_known_labels():
    """The same physical block sampled on a grid with an oblique direction: labels at the known places."""
    rot = np.asarray(sitk.VersorTransform((0.6, 0.2, -0.4), 0.3).GetMatrix()).reshape(3, 3)
    img = box_liver(rot, centre=C)
    res = couinaud.map_couinaud(img, box_landmarks(), method="planes")
    checked = 0
    for offset, expected in KNOWN_POINTS:
        p = C + offset
        idx = geometry.lps_to_index(img, p)
        if np.all(idx > 0) and np.all(idx < np.asarray(img.GetSize()) - 1):  # still inside the turned grid
            assert label_at(res.labels, p) == expected, offset
            checked += 1
    assert checked >= len(KNOWN_POINTS) - 2


def test_patient_axis_ignores_a_tilted_ivc_inferior_and_ivc_axis_follows_it():
    marks = box_landmarks()
    tilted = {**marks, "IVC_inferior": marks["IVC_inferior"] + [12.0, 0.0, 0.0]}  # 8.5° tilt, same height
    liver = box_liver()
    a = couinaud.map_couinaud(liver, marks, method="planes")
    b = couinaud.map_couinaud(liver, tilted, method="planes")
    la, lb = sitk.GetArrayViewFromImage(a.labels), sitk.GetArrayViewFromImage(b.labels)
    # the sector and portal borders stay on the vertical axis through IVC ...
    outside_one = (la != 1) & (lb != 1)
    np.testing.assert_array_equal(la[outside_one], lb[outside_one])
    # ... segment I follows the middle of the IVC: half of IVC_inferior's 12 mm to the patient's left (LPS +x)
    x_a = np.argwhere(la == 1)[:, 2].mean() * 2.0
    x_b = np.argwhere(lb == 1)[:, 2].mean() * 2.0
    assert 4.0 <= x_b - x_a <= 8.0, (x_a, x_b)
    c = couinaud.map_couinaud(liver, tilted, method="planes", axis="ivc")
    assert np.count_nonzero(sitk.GetArrayViewFromImage(c.labels) != sitk.GetArrayViewFromImage(a.labels)) > 1000
    with pytest.raises(InputError, match="Unknown axis"):
        couinaud.map_couinaud(liver, marks, axis="scanner")


def test_flipped_storage_gives_the_same_labels_at_the_same_places():
    """A RAS-ordered grid (direction diag(-1, -1, 1), like many NIfTI files) covering the same block."""
    img = sitk.Image(90, 90, 60, sitk.sitkUInt8) + 1
    img.SetSpacing((2.0, 2.0, 2.5))
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    img.SetOrigin((-89.0 + 89 * 2.0, -79.0 + 89 * 2.0, -75.0))
    flipped = couinaud.map_couinaud(img, box_landmarks(), method="planes")
    straight = couinaud.map_couinaud(box_liver(), box_landmarks(), method="planes")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(flipped.labels)[:, ::-1, ::-1],
                                  sitk.GetArrayViewFromImage(straight.labels))
    for offset, expected in KNOWN_POINTS:
        assert label_at(flipped.labels, C + offset) == expected, offset


def test_lps_and_ras_markups_files_give_identical_labels(tmp_path):
    lps = io.read_markups(io.write_markups(tmp_path / "lps.mrk.json", box_landmarks(), "LPS"))
    ras = io.read_markups(io.write_markups(tmp_path / "ras.mrk.json", box_landmarks(), "RAS"))
    liver = box_liver()
    a = couinaud.map_couinaud(liver, lps, method="planes").labels
    b = couinaud.map_couinaud(liver, ras, method="planes").labels
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


# ------------------------------------------------------------------------------ landmark checks

@pytest.mark.parametrize("name,words", [("MHV", "middle hepatic vein"), ("IVC", "confluence"), ("LPV", "left portal vein")])
def test_missing_required_landmark_is_named_with_where_to_place_it(name, words):
    marks = box_landmarks()
    del marks[name]
    with pytest.raises(InputError, match=name) as err:
        couinaud.check_landmarks(marks)
    assert words in str(err.value)


def test_missing_optional_landmarks_warn_and_say_what_the_result_becomes():
    marks = box_landmarks()
    del marks["UP"], marks["IVC_inferior"]
    warnings = couinaud.check_landmarks(marks)
    assert any("UP" in w and "LHV plane alone" in w for w in warnings)
    assert any("IVC_inferior" in w and "not checked" in w and "segment I" in w for w in warnings)
    res = couinaud.map_couinaud(box_liver(), marks, method="planes")
    assert set(res.missing_landmarks) == {"UP", "IVC_inferior"}
    assert any("UP" in w for w in res.warnings)
    # the vertical axis is then the patient's: the box's landmarks were on a vertical IVC, so sectors are unchanged
    assert label_at(res.labels, C + [-50.0, -20.0, 20.0]) == 8
    assert label_at(res.labels, C + [40.0, -20.0, -45.0]) == 3


def test_full_landmarks_give_no_warning():
    assert couinaud.check_landmarks(box_landmarks(), box_liver()) == []


def _swap(marks, a, b):
    marks = dict(marks)
    marks[a], marks[b] = marks[b], marks[a]
    return marks


@pytest.mark.parametrize("marks,pattern", [
    (_swap(box_landmarks(), "RHV", "LHV"), "not in anatomical order"),
    (_swap(box_landmarks(), "MHV", "LHV"), "not in anatomical order"),
    ({**box_landmarks(), "LHV": np.array([-20.0, 30.0, 40.0])}, "not in anatomical order"),  # left-right mirrored LHV
    (_swap(box_landmarks(), "RPV", "LPV"), "RPV does not lie to the right of LPV"),
    ({**box_landmarks(), "MHV": C + [-3.0, -3.0, 5.0]}, "MHV lies on the IVC axis"),
    ({**box_landmarks(), "MHV": C + [-50.0, -1.0, 10.0]}, "RHV and MHV lie on almost one plane"),  # collinear with IVC, RHV
    ({**box_landmarks(), "LPV": C + [-19.0, -20.5, -39.0]}, "coincide"),
    ({**box_landmarks(), "RPV": C + [-20.0, -20.0, 60.0]}, "above the hepatic-vein confluence"),
    (_swap(box_landmarks(), "IVC", "IVC_inferior"), "IVC_inferior lies above IVC"),
    ({**box_landmarks(), "IVC_inferior": C + [70.0, 0.0, -20.0]}, "tilted"),
    ({**box_landmarks(), "UP": np.array([np.nan, 0.0, 0.0])}, "3 finite coordinates"),
])
def test_contradictory_landmarks_raise(marks, pattern):
    with pytest.raises(InputError, match=pattern):
        couinaud.check_landmarks(marks)


def test_landmark_outside_the_image_raises():
    marks = {**box_landmarks(), "RHV": np.array([-500.0, 30.0, 40.0])}
    with pytest.raises(InputError, match="RHV lie outside the image"):
        couinaud.map_couinaud(box_liver(), marks)


def test_bad_method_and_territories_without_vessels():
    with pytest.raises(InputError, match="Unknown Couinaud method"):
        couinaud.map_couinaud(box_liver(), box_landmarks(), method="deep")
    with pytest.raises(InputError, match="needs a vessel mask"):
        couinaud.map_couinaud(box_liver(), box_landmarks(), method="territories")


def test_progress_reports_fractions_up_to_one():
    calls = []
    couinaud.map_couinaud(box_liver(), box_landmarks(), progress=lambda f, msg: calls.append((f, msg)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in calls)


def test_empty_liver_mask_raises():
    with pytest.raises(InputError, match="liver mask is empty"):
        couinaud.map_couinaud(box_liver() * 0, box_landmarks())


# ------------------------------------------------------------------------------- localization

def test_localize_lesion_straddling_the_right_portal_plane():
    """A 20 mm cube in the right posterior sector, centred on the RPV height: half VII, half VI."""
    liver = box_liver()
    res = couinaud.map_couinaud(liver, box_landmarks(), method="planes")
    les = np.zeros(sitk.GetArrayViewFromImage(liver).shape, np.uint16)
    # voxel centres: x = -89 + 2i, y = -79 + 2j, z = -75 + 2.5k; RPV height z = 0 lies between k=29 (-2.5) and 30 (0)
    # z centres -10..7.5 → k = 26..33: four below 0 (VI: -10, -7.5, -5, -2.5), four at/above 0 (VII: 0 .. 7.5)
    les[26:34, 55:65, 20:30] = 2  # x -49..-31, y 31..49: azimuth within ±25° of patient right-posterior
    lesion = geometry.copy_geometry(les, liver)
    rows = couinaud.localize_lesions(lesion, res.labels, box_landmarks())
    assert [r["id"] for r in rows] == [2]
    row = rows[0]
    assert row["segment_fractions"]["VII"] == pytest.approx(0.5)
    assert row["segment_fractions"]["VI"] == pytest.approx(0.5)
    assert sum(row["segment_fractions"].values()) == pytest.approx(1.0)
    assert row["main_segment"] in ("VI", "VII") and sorted(row["segments"]) == ["VI", "VII"]
    # RHV at (-35, 30, 40): nearest lesion voxel centre (-35, 31, 7.5): 32.5 mm in z, 1 mm in y
    assert row["nearest_hepatic_vein_landmark"] == "RHV"
    assert row["distance_hepatic_vein_landmark_mm"] == pytest.approx(np.hypot(1.0, 32.5), abs=0.01)
    # RPV at (-20, 10, 0): nearest voxel centre (-31, 31, 0): hypot(11, 21)
    assert row["nearest_portal_vein_landmark"] == "RPV"
    assert row["distance_portal_vein_landmark_mm"] == pytest.approx(np.hypot(11.0, 21.0), abs=0.01)


def test_localize_orders_ids_and_gives_zero_distance_inside():
    liver = box_liver()
    res = couinaud.map_couinaud(liver, box_landmarks(), method="planes")
    les = np.zeros(sitk.GetArrayViewFromImage(liver).shape, np.uint16)
    idx = np.round(geometry.lps_to_index(liver, box_landmarks()["RHV"])).astype(int)  # a lesion around the RHV point
    les[idx[2] - 2:idx[2] + 3, idx[1] - 2:idx[1] + 3, idx[0] - 2:idx[0] + 3] = 5
    les[5:8, 5:8, 5:8] = 1
    rows = couinaud.localize_lesions(geometry.copy_geometry(les, liver), res.labels, box_landmarks())
    assert [r["id"] for r in rows] == [1, 5]
    assert rows[1]["distance_hepatic_vein_landmark_mm"] == 0.0 and rows[1]["nearest_hepatic_vein_landmark"] == "RHV"
    assert set(rows[1]["segments"]) <= {"VII", "VIII"}


def test_localize_rejects_other_geometry():
    liver = box_liver()
    res = couinaud.map_couinaud(liver, box_landmarks(), method="planes")
    other = sitk.Image(10, 10, 10, sitk.sitkUInt16)
    with pytest.raises(InputError, match="geometry"):
        couinaud.localize_lesions(other, res.labels, box_landmarks())


# ------------------------------------------------------------------------ ground truth overlap

def dice_per_segment(test: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    out = {}
    for k in range(1, 9):
        a, b = test == k, truth == k
        out[k] = 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)
    return out


def test_real_crop_matches_reference_segments(ircadb_crop_dir):
    marks = io.read_markups(ircadb_crop_dir / "landmarks.mrk.json")
    liver = io.read_image(ircadb_crop_dir / "mask_liver.nii.gz")
    vessels = io.read_image(ircadb_crop_dir / "mask_vessels_intrahepatic.nii.gz")
    truth = sitk.GetArrayFromImage(io.read_image(ircadb_crop_dir / "couinaud_labels.nii.gz"))
    res = couinaud.map_couinaud(liver, marks, vessels, method="auto")
    scores = dice_per_segment(sitk.GetArrayViewFromImage(res.labels), truth)
    assert np.mean(list(scores.values())) >= 0.75, scores
    assert min(scores.values()) >= 0.6, scores
    # fractions near the 3D-IRCADb reference (domain.md §1): within a factor of 2.2 for every segment
    reference = {"I": .031, "II": .127, "III": .065, "IV": .151, "V": .149, "VI": .096, "VII": .155, "VIII": .227}
    for name, ref in reference.items():
        assert ref / 2.2 <= res.fractions[name] <= ref * 2.2, (name, res.fractions[name])
    terr = couinaud.map_couinaud(liver, marks, vessels, method="territories")
    assert terr.method == "territories"
    assert np.mean(list(dice_per_segment(sitk.GetArrayViewFromImage(terr.labels), truth).values())) >= 0.85


REAL_CASES = {
    # case: (mean Dice I-VIII as given, segment I, mean under 5 mm click error, its drop), each a little under the
    # figure measured (docs/validation.md, "Couinaud segments"): 0.945, 0.83, 0.907, 0.038 on ircadb1_1 and
    # 0.937, 0.84, 0.908, 0.029 on lits117; issue 25's targets are mean >= 0.95 / 0.93, segment I >= 0.75, drop <= 0.03
    "ircadb1_1": (0.943, 0.82, 0.903, 0.040),
    "lits117": (0.935, 0.82, 0.904, 0.031),
}


@pytest.mark.parametrize("case", sorted(REAL_CASES))
def test_real_case_with_its_liver_mask_and_five_mm_click_errors(case):
    """The real cases with their reference liver masks and landmarks (planes: what `auto` uses on both), then every
    landmark moved exactly 5 mm in a random direction (the 10 seeded draws of benchmarks/eval_click_error.py)."""
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / case
    if not (folder / "couinaud_labels.nii.gz").exists():
        pytest.skip(f"real data not available at {folder} (../shared/data relative to the repository root)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import eval_click_error

    mean_min, segment_one_min, moved_min, drop_max = REAL_CASES[case]
    liver = io.read_image(folder / "mask_liver.nii.gz")
    truth = sitk.GetArrayFromImage(io.read_image(folder / "couinaud_labels.nii.gz"))
    res = couinaud.map_couinaud(liver, io.read_markups(folder / "landmarks.mrk.json"), method="planes")
    scores = dice_per_segment(sitk.GetArrayViewFromImage(res.labels), truth)
    assert np.mean(list(scores.values())) >= mean_min, scores
    assert scores[1] >= segment_one_min, scores
    row = eval_click_error.case_row(folder, 5.0, 10, "planes")
    assert row["base"] == pytest.approx(np.mean(list(scores.values())))
    assert row["refused"] == 0 and len(row["scores"]) == 10
    assert np.mean(row["scores"]) >= moved_min, row["scores"]
    assert row["base"] - np.mean(row["scores"]) <= drop_max, row["scores"]


@pytest.fixture(scope="module")
def phantom_case():
    phantom = pytest.importorskip("LiverLocalizationLib.phantom")
    return phantom.generate_phantom(seed=11, size="small", n_lesions=4)


def test_phantom_segments_and_lesions(phantom_case):
    ph = phantom_case
    truth = sitk.GetArrayFromImage(ph.truth_couinaud)
    liver = sitk.Cast(ph.truth_couinaud > 0, sitk.sitkUInt8)
    res = couinaud.map_couinaud(liver, ph.landmarks, method="planes")
    scores = dice_per_segment(sitk.GetArrayViewFromImage(res.labels), truth)
    # segments II-VIII: sectors and portal planes, which the phantom models as real livers have them; its caudate
    # lies 0.3-0.5 D left of the IVC-bifurcation line, where the real ones (and the mapping) put it on that line
    # (docs/couinaud_geometry.md), so segment I is asked for less (measured 0.75 and 0.35 on this seed)
    assert np.mean([scores[k] for k in range(2, 9)]) >= 0.7, scores
    assert scores[1] >= 0.25, scores
    assert len(ph.lesions) > 0
    # localization against the true map reproduces the phantom's own lesion table
    rows = couinaud.localize_lesions(ph.truth_lesions, ph.truth_couinaud, ph.landmarks)
    assert [r["id"] for r in rows] == sorted(int(r["id"]) for r in ph.lesions)
    for row, lesion in zip(rows, sorted(ph.lesions, key=lambda r: r["id"])):
        for name, frac in lesion["couinaud_fractions"].items():
            assert row["segment_fractions"][name] == pytest.approx(frac, abs=1e-4)
        assert row["main_segment"] == lesion["main_segment"]
        assert row["distance_hepatic_vein_landmark_mm"] >= 0.0


# ------------------------------------------------------------------------------ territories, figures

def tube_mask(reference: sitk.Image, segments, radius_mm: float = 3.0) -> sitk.Image:
    """Binary mask of straight tubes (pairs of LPS points) on the reference grid."""
    zyx, pts = couinaud.liver_points(reference)
    inside = np.zeros(pts.shape[0], bool)
    for a, b in segments:
        inside |= couinaud._distance_to_segment(pts, np.asarray(a, float), np.asarray(b, float)) <= radius_mm
    arr = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    arr[tuple(z[inside] for z in zyx)] = 1
    return geometry.copy_geometry(arr, reference)


def test_territories_change_only_voxels_near_plane_borders():
    marks = box_landmarks()
    liver = box_liver()
    rpv, lpv = marks["RPV"], marks["LPV"]
    # a portal tree: RPV to a right-anterior branch that crosses the MHV plane, LPV to the left lateral section
    tree = [(rpv, lpv), (rpv, rpv + [-40.0, 0.0, 30.0]), (rpv, rpv + [-45.0, 25.0, -20.0]),
            (rpv + [-40.0, 0.0, 30.0], rpv + [-20.0, -45.0, 40.0]), (lpv, lpv + [45.0, -10.0, 25.0])]
    vessels = tube_mask(liver, tree)
    planes = couinaud.map_couinaud(liver, marks, method="planes")
    terr = couinaud.map_couinaud(liver, marks, vessels, method="territories")
    assert terr.method == "territories"
    a = sitk.GetArrayViewFromImage(planes.labels)
    b = sitk.GetArrayViewFromImage(terr.labels)
    changed = np.argwhere(a != b)
    assert changed.shape[0] > 0
    margin = couinaud.border_margin(geometry.voxel_centers_lps(liver, changed).astype(np.float32),
                                    couinaud.landmark_frame(marks))
    assert margin.max() < couinaud.TERRITORY_BAND_MM
    np.testing.assert_array_equal(a == 1, b == 1)  # segment I is the planes'


def test_territories_without_usable_vessels_fall_back_to_planes():
    liver = box_liver()
    empty = liver * 0
    res = couinaud.map_couinaud(liver, box_landmarks(), empty, method="territories")
    assert res.method == "planes"
    assert any("Too few vessel voxels" in w for w in res.warnings)
    auto = couinaud.map_couinaud(liver, box_landmarks(), empty, method="auto")
    assert auto.method == "planes" and not any("vessel" in w for w in auto.warnings)


def test_figures_are_written(tmp_path):
    from LiverLocalizationLib.figures import couinaud as figures

    liver = box_liver()
    ct = sitk.Cast(liver, sitk.sitkInt16) * 100
    res = couinaud.map_couinaud(liver, box_landmarks(), method="planes")
    les = np.zeros(sitk.GetArrayViewFromImage(liver).shape, np.uint16)
    les[28:34, 55:65, 20:30] = 1
    lesion = geometry.copy_geometry(les, liver)
    a = figures.plot_couinaud(ct, res.labels, box_landmarks(), lesion, tmp_path / "cou.png")
    b = figures.plot_geometry(ct, res.labels, box_landmarks(), tmp_path / "geom.png")
    for path in (a, b):
        assert path.exists() and path.stat().st_size > 20_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ vessel-guided borders

def _point(marks, azimuth_deg: float, radius: float, height: float) -> np.ndarray:
    """LPS point at an azimuth about the box's IVC axis (0° = toward RHV, i.e. −x; 90° = anterior, −y)."""
    a = np.radians(azimuth_deg)
    return marks["IVC"] + np.array([-radius * np.cos(a), -radius * np.sin(a), height])


def test_vessel_guided_border_follows_a_bent_middle_hepatic_vein():
    marks = box_landmarks()
    liver = box_liver()
    # the MHV leaves its landmark (45°, r 35 mm, at the confluence) and bends to 60° lower down and further out
    path = [marks["IVC"] + [-5.0, -5.0, 0.0], marks["MHV"], _point(marks, 52.0, 45.0, -25.0), _point(marks, 60.0, 55.0, -50.0)]
    vessels = tube_mask(liver, list(zip(path[:-1], path[1:])), radius_mm=4.0)
    planes = couinaud.map_couinaud(liver, marks, vessels, method="planes")
    guided = couinaud.map_couinaud(liver, marks, vessels, method="vessels")
    assert guided.method == "vessels"
    # between the MHV plane (45°) and the bent vein (≈ 56° there): IV by the plane, right anterior by the vein
    p = _point(marks, 50.0, 47.0, -30.0)
    assert label_at(planes.labels, p) == 4
    assert label_at(guided.labels, p) == 8
    # beyond the bent vein it stays IV; near the RHV border (no RHV traced) nothing moves
    q = _point(marks, 66.0, 47.0, -30.0)
    assert label_at(guided.labels, q) == 4
    for az in (-4.0, 4.0):
        r = _point(marks, az, 50.0, 10.0)
        assert label_at(guided.labels, r) == label_at(planes.labels, r)
    # high above, far from the traced vein, the MHV border is the landmark plane again
    s = _point(marks, 50.0, 30.0, 30.0)
    assert label_at(guided.labels, s) == label_at(planes.labels, s) == 4


def complete_box_tree(marks, with_lhv: bool = True):
    """Tube segments of a whole vessel tree about the box landmarks: three hepatic veins along their planes,
    and portal branches in the right posterior (horizontal at 15 mm above RPV), right anterior (at the RPV
    height) and left lateral (at the LPV height) sectors."""
    c = marks["IVC"]
    veins = [(c, _point(marks, az, 75.0, -15.0)) for az, name in ((0.0, "RHV"), (45.0, "MHV"), (90.0, "LHV"))
             if with_lhv or name != "LHV"]
    rpv, lpv = marks["RPV"], marks["LPV"]
    h_rpv, h_lpv = rpv[2] - c[2], lpv[2] - c[2]
    post_a, post_b = _point(marks, -15.0, 30.0, h_rpv + 15.0), _point(marks, -40.0, 85.0, h_rpv + 15.0)
    portal = [(rpv, lpv), (rpv, post_a), (post_a, post_b),
              (rpv, _point(marks, 20.0, 75.0, h_rpv)), (lpv, _point(marks, 140.0, 70.0, h_lpv))]
    return veins, portal


def test_portal_branches_set_each_sectors_superior_inferior_height():
    marks = box_landmarks()
    liver = box_liver()
    veins, portal = complete_box_tree(marks)
    vessels = tube_mask(liver, veins + portal, radius_mm=3.5)
    planes = couinaud.map_couinaud(liver, marks, vessels, method="planes")
    auto = couinaud.map_couinaud(liver, marks, vessels, method="auto")
    assert auto.method == "vessels", auto.warnings
    frame = couinaud.landmark_frame(marks)
    guidance = couinaud.vessel_guidance(liver, couinaud.liver_points(liver)[1], vessels, frame, marks)
    assert guidance.complete, guidance.missing
    h_rpv = frame.height["RPV"]
    # the right posterior branch runs 15 mm above RPV: its sector's border follows it (median of its voxels)
    assert guidance.split_heights["right_posterior"] == pytest.approx(h_rpv + 15.0, abs=3.0)
    assert guidance.split_heights["right_anterior"] == pytest.approx(h_rpv, abs=3.0)
    assert guidance.split_heights["left_lateral"] == pytest.approx(frame.height["LPV"], abs=3.0)
    p = _point(marks, -60.0, 50.0, h_rpv + 7.0)  # right posterior, between the RPV height and its branch
    assert label_at(planes.labels, p) == 7
    assert label_at(auto.labels, p) == 6
    q = _point(marks, 22.0, 50.0, h_rpv + 7.0)  # right anterior: its branch is at the RPV height, no change
    assert label_at(planes.labels, q) == label_at(auto.labels, q) == 8


def test_auto_uses_planes_when_the_tree_is_incomplete_and_says_what_is_missing():
    marks = box_landmarks()
    liver = box_liver()
    veins, portal = complete_box_tree(marks, with_lhv=False)
    vessels = tube_mask(liver, veins + portal, radius_mm=3.5)
    auto = couinaud.map_couinaud(liver, marks, vessels, method="auto")
    planes = couinaud.map_couinaud(liver, marks, method="planes")
    assert auto.method == "planes"
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(auto.labels), sitk.GetArrayViewFromImage(planes.labels))
    assert any("LHV" in w and "landmark planes" in w for w in auto.warnings), auto.warnings
    # asked for explicitly, 'vessels' uses what was found and says what was not
    guided = couinaud.map_couinaud(liver, marks, vessels, method="vessels")
    assert guided.method == "vessels"
    assert any("not found in the vessel mask: LHV" in w for w in guided.warnings), guided.warnings


def test_vessel_guided_without_vessels_falls_back_and_needs_a_mask():
    liver = box_liver()
    res = couinaud.map_couinaud(liver, box_landmarks(), liver * 0, method="vessels")
    assert res.method == "planes"
    assert any("hepatic-vein voxels" in w for w in res.warnings)
    with pytest.raises(InputError, match="needs a vessel mask"):
        couinaud.map_couinaud(liver, box_landmarks(), method="vessels")


def test_vessel_guided_beats_planes_on_a_phantom(phantom_case):
    ph = phantom_case
    truth = sitk.GetArrayFromImage(ph.truth_couinaud)
    liver = sitk.Cast(ph.truth_couinaud > 0, sitk.sitkUInt8)
    tissue = sitk.GetArrayViewFromImage(ph.truth_tissue)
    vessels = geometry.copy_geometry(np.isin(tissue, [3, 4]).astype(np.uint8), liver)
    planes = couinaud.map_couinaud(liver, ph.landmarks, vessels, method="planes")
    guided = couinaud.map_couinaud(liver, ph.landmarks, vessels, method="auto")
    d_planes = np.mean(list(dice_per_segment(sitk.GetArrayViewFromImage(planes.labels), truth).values()))
    d_guided = np.mean(list(dice_per_segment(sitk.GetArrayViewFromImage(guided.labels), truth).values()))
    assert guided.method == "vessels", guided.warnings  # the phantom's tree is complete: auto takes the vessels
    assert d_guided > d_planes + 0.01, (d_guided, d_planes)


def test_result_reports_what_the_vessel_mask_showed():
    marks = box_landmarks()
    liver = box_liver()
    veins, portal = complete_box_tree(marks)
    res = couinaud.map_couinaud(liver, marks, tube_mask(liver, veins + portal, radius_mm=3.5), method="auto")
    info = res.vessel_guidance
    assert info["complete"] and info["missing"] == []
    assert set(info["hepatic_vein_ml"]) == {"RHV", "MHV", "LHV"} and min(info["hepatic_vein_ml"].values()) >= 1.0
    h_rpv = couinaud.landmark_frame(marks).height["RPV"]
    assert info["landmark_split_height_mm"]["right_posterior"] == pytest.approx(h_rpv, abs=0.05)
    assert info["split_height_mm"]["right_posterior"] == pytest.approx(h_rpv + 15.0, abs=3.0)
    import json
    json.dumps(info)  # goes into report.json as it is
    assert couinaud.map_couinaud(liver, marks, method="planes").vessel_guidance is None


# ------------------------------------------------------------------------------ nine segments (IVa / IVb)

NINE = ["I", "II", "III", "IVa", "IVb", "V", "VI", "VII", "VIII"]


def _heights(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Height (mm) above the box's IVC landmark of the voxel centres of a mask (the box has no rotation)."""
    return geometry.voxel_centers_lps(image, np.argwhere(mask))[:, 2] - C[2]


def _left_tree(marks, left_drop_mm: float):
    """The complete box tree with its left lateral portal branch `left_drop_mm` below the LPV height."""
    veins, portal = complete_box_tree(marks)
    lpv = marks["LPV"]
    h = lpv[2] - marks["IVC"][2] - left_drop_mm
    low = lpv + [0.0, 0.0, -left_drop_mm]
    return veins, portal[:-1] + [(lpv, low), (low, _point(marks, 140.0, 70.0, h))]


@pytest.mark.parametrize("method", ["planes", "vessels"])
def test_nine_segments_split_iv_at_the_left_portal_height_and_change_nothing_else(method):
    """IV of the eight-segment map is exactly IVa ∪ IVb; IVa lies at or above and IVb below the height that splits
    II from III (the LPV plane; with vessel-guided borders the left lateral branch's height, here 10 mm lower);
    every other voxel keeps its label; volumes add up."""
    marks, liver = box_landmarks(), box_liver()
    vessels = tube_mask(liver, sum(_left_tree(marks, 10.0), []), radius_mm=3.5) if method == "vessels" else None
    eight = couinaud.map_couinaud(liver, marks, vessels, method=method)
    nine = couinaud.map_couinaud(liver, marks, vessels, method=method, segments=9)
    assert nine.method == eight.method == method and nine.segments == 9 and eight.segments == 8
    a8, a9 = sitk.GetArrayFromImage(eight.labels), sitk.GetArrayFromImage(nine.labels)
    iv = a8 == 4
    np.testing.assert_array_equal(a9[~iv], a8[~iv])  # every other segment voxel-identical
    assert set(np.unique(a9[iv])) == {labels.COUINAUD_IVA, labels.COUINAUD_IVB}  # IV = IVa ∪ IVb, both present
    split = couinaud.landmark_frame(marks).height["LPV"] - (10.0 if method == "vessels" else 0.0)
    tol = 3.0 if method == "vessels" else 1e-3  # the vessel-guided height is the median of the branch's voxels
    h_iva, h_ivb = _heights(liver, a9 == 4), _heights(liver, a9 == 9)
    assert h_iva.min() >= split - tol and h_ivb.max() < split + tol
    # the same height as II | III: IVa starts where II starts, IVb ends where III ends
    assert h_iva.min() == pytest.approx(_heights(liver, a9 == 2).min())
    assert h_ivb.max() == pytest.approx(_heights(liver, a9 == 3).max())
    assert list(nine.volumes_ml) == NINE and list(eight.volumes_ml) == NINE[:3] + ["IV"] + NINE[5:]
    assert nine.volumes_ml["IVa"] + nine.volumes_ml["IVb"] == pytest.approx(eight.volumes_ml["IV"])
    assert {k: nine.volumes_ml[k] for k in NINE if not k.startswith("IV")} == \
        {k: eight.volumes_ml[k] for k in NINE if not k.startswith("IV")}
    assert sum(nine.fractions.values()) == pytest.approx(1.0)


def test_eight_segments_stay_the_default():
    marks, liver = box_landmarks(), box_liver()
    default = couinaud.map_couinaud(liver, marks, method="planes")
    eight = couinaud.map_couinaud(liver, marks, method="planes", segments=8)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(default.labels), sitk.GetArrayViewFromImage(eight.labels))
    assert default.segments == 8 and int(sitk.GetArrayViewFromImage(default.labels).max()) == 8
    for offset, expected in KNOWN_POINTS:
        assert label_at(default.labels, C + offset) == expected
    assert labels.couinaud_names() == labels.COUINAUD_ROMAN and labels.couinaud_styles() == labels.COUINAUD_STYLES


@pytest.mark.parametrize("segments", [7, 10, 0, True, "9"])
def test_other_segment_counts_are_refused(segments):
    with pytest.raises(InputError, match="choose 8 .* or 9"):
        couinaud.map_couinaud(box_liver(), box_landmarks(), method="planes", segments=segments)


def test_report_names_iva_and_ivb_for_lesions_in_each():
    """A 10 mm cube in IV 20 mm above the LPV plane is IVa, one 20 mm below it IVb (IV with eight segments)."""
    marks, liver = box_landmarks(), box_liver()
    h_lpv = couinaud.landmark_frame(marks).height["LPV"]
    les = np.zeros(sitk.GetArrayViewFromImage(liver).shape, np.uint16)
    for lesion_id, dh in ((1, 20.0), (2, -20.0)):
        i, j, k = np.round(geometry.lps_to_index(liver, C + [-30.0, -60.0, h_lpv + dh])).astype(int)
        les[k - 2:k + 3, j - 2:j + 3, i - 2:i + 3] = lesion_id
    lesion = geometry.copy_geometry(les, liver)
    nine = couinaud.map_couinaud(liver, marks, method="planes", segments=9)
    rows = couinaud.localize_lesions(lesion, nine.labels, marks, segments=9)
    assert [(r["main_segment"], r["segments"]) for r in rows] == [("IVa", ["IVa"]), ("IVb", ["IVb"])]
    assert list(rows[0]["segment_fractions"]) == NINE and rows[1]["segment_fractions"]["IVb"] == 1.0
    eight = couinaud.map_couinaud(liver, marks, method="planes")
    assert [r["main_segment"] for r in couinaud.localize_lesions(lesion, eight.labels, marks)] == ["IV", "IV"]
    # a nine-segment map read as eight segments would lose IVb: refused
    with pytest.raises(InputError, match="labels \\[9\\]"):
        couinaud.localize_lesions(lesion, nine.labels, marks)


def test_iva_and_ivb_styles_carry_names_colours_and_terminology():
    styles = labels.couinaud_styles(9)
    assert [s.name for s in styles.values()] == [f"Couinaud {n}" for n in NINE]
    assert list(styles) == [1, 2, 3, 4, 9, 5, 6, 7, 8]
    iva, ivb = styles[labels.COUINAUD_IVA], styles[labels.COUINAUD_IVB]
    colours = [s.color for s in styles.values()]
    assert len(set(colours)) == 9  # IVa and IVb distinct from each other and from every other segment
    for style, modifier in ((iva, ("264217000", "Superior")), (ivb, ("261089000", "Inferior"))):
        entry = segfile.parse_terminology_entry(segfile.terminology_entry(style))
        assert entry["category"] == labels.ANATOMICAL_STRUCTURE
        assert entry["type"] == labels.Code("SCT", "277958008", "Hepatic segment IV")
        assert entry["modifier"] == labels.Code("SCT", *modifier)
    # segments without a modifier still write an empty one
    assert segfile.parse_terminology_entry(segfile.terminology_entry(labels.COUINAUD_STYLES[4]))["modifier"] is None


def test_nine_segment_figure_is_written(tmp_path):
    from LiverLocalizationLib.figures import couinaud as figures

    liver = box_liver()
    res = couinaud.map_couinaud(liver, box_landmarks(), method="planes", segments=9)
    path = figures.plot_couinaud(sitk.Cast(liver, sitk.sitkInt16) * 100, res.labels, box_landmarks(), None,
                                 tmp_path / "cou9.png")
    assert path.stat().st_size > 20_000
