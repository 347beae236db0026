"""Image and markups I/O round trips keep geometry exactly; bad files give clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LiverLocalizationLib import geometry, io
from LiverLocalizationLib.errors import InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rotated_image(pixel=sitk.sitkInt16):
    img = sitk.Image(20, 16, 12, pixel)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((-12.5, 30.25, 101.0))
    rot = sitk.VersorTransform((0.2, -0.1, 0.3), 0.4)  # axis, angle (rad)
    img.SetDirection(rot.GetMatrix())
    arr = np.random.default_rng(0).integers(-1000, 1000, size=(12, 16, 20)).astype(np.int16)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_image_round_trip_keeps_rotated_geometry(tmp_path, suffix):
    img = rotated_image()
    path = io.write_image(img, tmp_path / f"x{suffix}")
    back = io.read_image(path)
    assert back.GetSize() == img.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))


def test_index_and_physical_points_agree_with_simpleitk():
    img = rotated_image()
    idx = np.array([[3, 5, 7], [0, 0, 0], [19, 15, 11]], float)
    ours = geometry.index_to_lps(img, idx)
    theirs = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in idx])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(geometry.lps_to_index(img, ours), idx, atol=1e-9)
    grid = geometry.physical_grid_lps(img, dtype=np.float64)
    np.testing.assert_allclose(grid[7, 5, 3], theirs[0], atol=1e-9)


def test_markups_round_trip_lps_and_ras(tmp_path):
    pts = {"IVC": np.array([10.0, -20.5, 30.25]), "RHV": np.array([-40.0, 5.0, 60.0])}
    for system in ("LPS", "RAS"):
        path = io.write_markups(tmp_path / f"l_{system}.mrk.json", pts, coordinate_system=system)
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert doc["markups"][0]["coordinateSystem"] == system
        stored = doc["markups"][0]["controlPoints"][0]["position"]
        expected = pts["IVC"] * (np.array([-1, -1, 1]) if system == "RAS" else 1)
        np.testing.assert_allclose(stored, expected)
        back = io.read_markups(path)
        assert set(back) == set(pts)
        for k in pts:
            np.testing.assert_allclose(back[k], pts[k], atol=1e-4)


def test_markups_errors(tmp_path):
    bad = tmp_path / "bad.mrk.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not a Slicer markups JSON"):
        io.read_markups(bad)
    dup = tmp_path / "dup.mrk.json"
    io.write_markups(dup, {"IVC": np.zeros(3)})
    doc = json.loads(dup.read_text(encoding="utf-8"))
    doc["markups"][0]["controlPoints"].append(dict(doc["markups"][0]["controlPoints"][0]))
    dup.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match="'IVC' appears twice"):
        io.read_markups(dup)
    with pytest.raises(InputError, match="no such markups file"):
        io.read_markups(tmp_path / "missing.mrk.json")


def test_read_image_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        io.read_image(tmp_path / "nope.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="cannot be read as an image"):
        io.read_image(junk)
    with pytest.raises(InputError, match="no DICOM series"):
        io.read_image(tmp_path)


def ct_like(size=(32, 32, 16)):
    arr = np.full(size[::-1], -1000, np.float32)
    arr[4:-4, 6:-6, 6:-6] = 100
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    return img


def test_validate_ct_accepts_ct_and_rejects_bad_volumes():
    assert io.validate_ct(ct_like()).GetPixelID() == sitk.sitkFloat32
    with pytest.raises(InputError, match="2-D"):
        io.validate_ct(sitk.Image(64, 64, sitk.sitkInt16))
    with pytest.raises(InputError, match="at least 8 voxels"):
        io.validate_ct(ct_like((32, 32, 3)))
    nan = sitk.GetArrayFromImage(ct_like())
    nan[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        io.validate_ct(sitk.GetImageFromArray(nan))
    with pytest.raises(InputError, match="constant"):
        io.validate_ct(sitk.GetImageFromArray(np.zeros((16, 32, 32), np.float32)))
    mri = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 900, (16, 32, 32)).astype(np.float32))
    with pytest.raises(InputError, match="does not look like CT"):
        io.validate_ct(mri)


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent (real CTs are only in the project's CI and dev machines)")
def test_real_dicom_series_and_flipped_nifti():
    dicom = io.read_image(SHARED / "totalseg_example" / "ct_dicom")
    assert dicom.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(dicom.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-4)
    io.validate_ct(dicom)
    flipped = io.read_image(SHARED / "totalseg_example" / "example_ct_sm.nii.gz")
    np.testing.assert_allclose(geometry.direction_matrix(flipped), np.diag([-1, -1, 1]), atol=1e-6)
    marks = io.read_markups(SHARED / "ircadb1_1" / "landmarks.mrk.json")
    assert {"IVC", "RHV", "MHV", "LHV", "RPV", "LPV", "UP", "IVC_inferior"} <= set(marks)


def test_depth_mm_equals_scipys_distance_transform_on_an_anisotropic_grid():
    from scipy import ndimage

    rng = np.random.default_rng(2)
    region = ndimage.binary_opening(rng.random((30, 40, 50)) < 0.8)
    spacing = (2.5, 0.7, 0.9)
    expected = ndimage.distance_transform_edt(region, sampling=spacing)
    got = geometry.depth_mm(region, spacing)
    assert got.dtype == np.float32 and got.shape == region.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.all(np.isinf(geometry.depth_mm(np.ones((4, 4, 4), bool), spacing)))
    assert not geometry.depth_mm(np.zeros((4, 4, 4), bool), spacing).any()


def test_dilate_mm_and_close_mm_equal_scipys_ball_morphology_on_anisotropic_grids():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    for spacing, radius in (((3.2, 2.28, 2.28), 15.0), ((2.0, 2.8, 2.8), 8.0), ((1.6, 0.57, 0.57), 2.0),
                            ((2.5, 2.5, 2.5), 5.0)):
        mask = ndimage.gaussian_filter(rng.random((30, 34, 38)), 2.0) > 0.52
        ball = geometry.ball_structure(radius, spacing)
        np.testing.assert_array_equal(geometry.dilate_mm(mask, radius, spacing),
                                      ndimage.binary_dilation(mask, structure=ball))
        pad = [(int(np.ceil(radius / s)) + 1,) * 2 for s in spacing]
        expected = ndimage.binary_closing(np.pad(mask, pad), structure=ball)
        expected = expected[tuple(slice(p[0], p[0] + n) for p, n in geometry.zip_equal(pad, mask.shape))]
        closed = geometry.close_mm(mask, radius, spacing)
        np.testing.assert_array_equal(closed, expected)
        assert closed[mask].all()  # extensive, also where the mask meets the array's faces
        assert (closed & ~mask).any()


def test_distances_on_the_box_round_a_small_region_equal_those_on_the_whole_array():
    """`depth_mm` of a region far smaller than its array, `distance_to_mm` and `dilate_mm` work on the box round
    it: the same values as scipy's transform of the whole array (a region against one face included)."""
    from scipy import ndimage

    rng = np.random.default_rng(9)
    spacing = (2.5, 0.7, 0.9)
    for centre in ((20, 30, 40), (20, 30, 2), (1, 60, 75)):
        region = np.zeros((40, 64, 80), bool)
        z, y, x = np.indices(region.shape)
        region[((z - centre[0]) * 2.5) ** 2 + ((y - centre[1]) * 0.7) ** 2 + ((x - centre[2]) * 0.9) ** 2 < 36] = True
        region &= rng.random(region.shape) < 0.9
        assert geometry.bounding_box(region) is not None
        np.testing.assert_allclose(geometry.depth_mm(region, spacing),
                                   ndimage.distance_transform_edt(region, sampling=spacing), atol=1e-4)
        full = ndimage.distance_transform_edt(~region, sampling=spacing)
        near = geometry.distance_to_mm(region, spacing, 7.0)
        np.testing.assert_allclose(near[full <= 7.0], full[full <= 7.0], atol=1e-4)
        assert np.isinf(near[full > 7.0 + 1e-4]).all()
        np.testing.assert_array_equal(geometry.dilate_mm(region, 4.0, spacing),
                                      ndimage.binary_dilation(region, structure=geometry.ball_structure(4.0, spacing)))
    assert geometry.bounding_box(np.zeros((3, 3, 3), bool)) is None
    assert geometry.bounding_box(np.pad(np.ones((2, 2, 2), bool), 3), (1, 2, 9)) == (
        slice(2, 6), slice(1, 7), slice(0, 8))
    assert np.isinf(geometry.distance_to_mm(np.zeros((3, 3, 3), bool), spacing, 5.0)).all()


def test_widen_pads_slices_and_clips_them_to_the_array():
    sl = (slice(0, 3), slice(5, 8), slice(2, 4))
    assert geometry.widen(sl, 2, (10, 9, 5)) == (slice(0, 5), slice(3, 9), slice(0, 5))
    assert geometry.widen(sl, (0, 1, 3), (10, 9, 5)) == (slice(0, 3), slice(4, 9), slice(0, 5))


@pytest.mark.parametrize("trial", range(12))
def test_canonical_storage_keeps_every_voxel_in_place_and_maps_back_exactly(trial):
    """Any axis permutation and reversal, axis-aligned or oblique (up to 17° about each axis; 46° on the last
    trials): the canonical copy holds each value at the same physical point, its axes run along +L, +P, +S
    (its direction's diagonal positive, each axis nearest its own LPS axis below 17°), it is its own canonical
    form, and `from_canonical_storage` gives back the original array and geometry bit for bit."""
    import itertools

    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(trial)
    arr = rng.normal(size=(5, 6, 7)).astype(np.float32)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    perm = list(itertools.permutations(range(3)))[trial % 6]
    d = np.zeros((3, 3))
    for axis in range(3):
        d[perm[axis], axis] = rng.choice([-1.0, 1.0])
    angle = 0.0 if trial < 6 else (0.3 if trial < 10 else 0.8)
    d = Rotation.from_euler("xyz", rng.uniform(-angle, angle, 3)).as_matrix() @ d
    image.SetDirection(d.ravel().tolist())
    canonical = geometry.to_canonical_storage(image)
    for index in ((0, 0, 0), (6, 5, 4), (6, 0, 4), (2, 3, 1)):
        point = image.TransformIndexToPhysicalPoint(index)
        at = canonical.TransformPhysicalPointToIndex(point)
        assert np.allclose(canonical.TransformIndexToPhysicalPoint(at), point, atol=1e-6)
        assert canonical[at] == image[index]
    cd = geometry.direction_matrix(canonical)
    assert np.all(np.diag(cd) > 0)
    if angle < 0.5:
        assert np.argmax(np.abs(cd), axis=0).tolist() == [0, 1, 2]
    assert geometry.storage_order(canonical).identity
    assert geometry.storage_order(image).identity == (trial % 6 == 0 and np.all(np.diag(d) > 0))
    back = geometry.from_canonical_storage(canonical, image)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), arr)
    assert (back.GetOrigin(), back.GetSpacing(), back.GetDirection()) == (image.GetOrigin(), image.GetSpacing(),
                                                                          image.GetDirection())


def test_lesion_points_any_labels_in_lps_or_ras_none_lost(tmp_path):
    """Lesion clicks keep every defined point: empty labels become 'point N', repeats get ' (N)'; RAS files are
    read back in LPS; a file with no defined point is refused."""
    pts = {"tumour": np.array([10.0, -20.5, 30.25]), "": np.array([-40.0, 5.0, 60.0])}
    for system in ("LPS", "RAS"):
        path = io.write_markups(tmp_path / f"p_{system}.mrk.json", pts, coordinate_system=system)
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["markups"][0]["controlPoints"].append(dict(doc["markups"][0]["controlPoints"][0]))
        undefined = dict(doc["markups"][0]["controlPoints"][0], positionStatus="undefined", label="ghost")
        doc["markups"][0]["controlPoints"].append(undefined)
        path.write_text(json.dumps(doc), encoding="utf-8")
        back = io.read_lesion_points(path)
        assert list(back) == ["tumour", "point 2", "tumour (3)"]
        np.testing.assert_allclose(back["tumour"], pts["tumour"], atol=1e-4)
        np.testing.assert_allclose(back["point 2"], pts[""], atol=1e-4)
        np.testing.assert_allclose(back["tumour (3)"], pts["tumour"], atol=1e-4)
    empty = tmp_path / "empty.mrk.json"
    doc = json.loads(io.write_markups(empty, {"a": np.zeros(3)}).read_text(encoding="utf-8"))
    doc["markups"][0]["controlPoints"] = []
    empty.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match="no defined point; click at least one point inside a lesion"):
        io.read_lesion_points(empty)


def test_zip_equal_is_zip_strict():
    """geometry.zip_equal stands in for zip(..., strict=True), which Python 3.9 (Slicer 5.6-5.8) lacks."""
    assert list(geometry.zip_equal((1, 2), "ab", np.array([3.0, 4.0]))) == [(1, "a", 3.0), (2, "b", 4.0)]
    assert list(geometry.zip_equal()) == []
    for short_first in (True, False):
        a, b = ([1], [1, 2]) if short_first else ([1, 2], [1])
        pairs = geometry.zip_equal(a, b)
        assert next(pairs) == (1, 1)
        with pytest.raises(ValueError, match="different lengths"):
            next(pairs)
