"""Liver extraction, lesions and vessels (segment_tissues) on the phantom and the real 2 mm crop; errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverLocalizationLib import denoise, geometry, io, labels, lesions, metrics, tissue_model
from LiverLocalizationLib import liver as liver_extraction
from LiverLocalizationLib.errors import InputError


@pytest.fixture(scope="module")
def phantom_run():
    """Phantom seed 11 (small) with four cysts or metastases (the kinds with a dark core), denoised and segmented."""
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(11, size="small", n_lesions=4, lesion_kinds=("cyst", "metastasis"))
    den = denoise.denoise(ph.ct, "curvature")
    return ph, den, tissue_model.segment_tissues(den, ph.landmarks)


def _same_geometry_exactly(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
            and a.GetDirection() == b.GetDirection())


def test_phantom_liver_dice(phantom_run):
    ph, _, res = phantom_run
    truth = np.isin(sitk.GetArrayViewFromImage(ph.truth_tissue), labels.TRUTH_LIVER)
    assert metrics.dice(res.liver_mask, truth) >= 0.93


def test_every_phantom_lesion_of_15_mm_is_detected(phantom_run):
    ph, _, res = phantom_run
    match = metrics.match_instances(res.lesion_labels, ph.truth_lesions)
    found = {truth_id for _, truth_id, _ in match["pairs"]}
    big = [row for row in ph.lesions if row["diameter_mm"] >= 15]
    assert big, "the test phantom should hold lesions of 15 mm or more"
    missed = [f"{row['kind']} {row['diameter_mm']:.0f} mm" for row in big if row["id"] not in found]
    assert not missed, f"missed: {missed}"
    assert len(match["false_positives"]) <= 1


def test_phantom_lesion_extent(phantom_run):
    """Lesion voxels (all instances) against the truth: 0.685 measured on this phantom with the hysteresis growth."""
    ph, _, res = phantom_run
    assert metrics.dice(sitk.GetArrayViewFromImage(res.lesion_labels) > 0,
                        sitk.GetArrayViewFromImage(ph.truth_lesions) > 0) >= 0.6


def test_outputs_types_values_and_geometry(phantom_run):
    ph, _, res = phantom_run
    for img, pixel in ((res.liver_mask, sitk.sitkUInt8), (res.tissue, sitk.sitkUInt8),
                       (res.lesion_labels, sitk.sitkUInt16), (res.vessel_mask, sitk.sitkUInt8)):
        assert img.GetPixelID() == pixel
        assert _same_geometry_exactly(img, ph.ct)
    tissue = sitk.GetArrayViewFromImage(res.tissue)
    liver = sitk.GetArrayViewFromImage(res.liver_mask)
    lesion = sitk.GetArrayViewFromImage(res.lesion_labels)
    assert set(np.unique(tissue)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(tissue > 0, liver > 0)
    np.testing.assert_array_equal(tissue == labels.LESION, lesion > 0)
    np.testing.assert_array_equal(tissue == labels.VESSEL, sitk.GetArrayViewFromImage(res.vessel_mask) > 0)
    sizes = [int((lesion == i).sum()) for i in range(1, int(lesion.max()) + 1)]
    assert sizes == sorted(sizes, reverse=True) and all(s > 0 for s in sizes)
    cores = sitk.GetArrayViewFromImage(res.lesion_cores)
    assert _same_geometry_exactly(res.lesion_cores, ph.ct) and res.lesion_cores.GetPixelID() == sitk.sitkUInt16
    # each core lies in its own lesion (same id) or, where a cyst was cut back to its half-contrast edge, in none
    # (this grid's 2.5 mm slices are less than 1.5 times its 2 mm pixels: no thick-slice caps are cut)
    assert not ((cores > 0) & (lesion > 0) & (lesion != cores)).any()
    for i in range(1, int(cores.max()) + 1):
        outside = (cores == i) & (lesion == 0)
        assert not outside.any() or np.median(sitk.GetArrayViewFromImage(ph.ct)[lesion == i]) < lesions.FLUID_HU
    assert set(np.unique(cores)) == set(np.unique(lesion))
    assert {"liver_s", "em_fit_s", "mrf_s", "lesions_s"} <= set(res.timings)
    assert res.model.n_classes >= 2 and "parenchyma" in res.model.names


def test_vessels_overlap_the_true_vessels(phantom_run):
    ph, _, res = phantom_run
    truth = sitk.GetArrayViewFromImage(ph.truth_tissue)
    vessels = np.isin(truth, labels.TRUTH_INTRAHEPATIC_VESSELS)
    assert metrics.dice(res.vessel_mask, vessels) >= 0.5


def test_measure_lesions_against_the_phantom_table(phantom_run):
    ph, den, res = phantom_run
    rows = lesions.measure_lesions(ph.truth_lesions, ph.ct)
    assert [r["id"] for r in rows] == [r["id"] for r in ph.lesions]
    for mine, truth in zip(rows, ph.lesions):
        assert mine["volume_ml"] == pytest.approx(truth["volume_ml"], rel=0.02)
        np.testing.assert_allclose(mine["centroid_ras"], truth["centroid_ras"], atol=1.5)
        assert mine["max_diameter_mm"] >= 0.9 * truth["diameter_mm"]  # ellipsoids: longest axis >= sphere diameter


def test_measure_lesions_of_a_sphere():
    img = sitk.Image(40, 40, 40, sitk.sitkUInt16)
    img.SetSpacing((1.0, 1.0, 1.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    zz, yy, xx = np.indices((40, 40, 40))
    ball = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 10 ** 2
    arr = np.where(ball, 1, 0).astype(np.uint16)
    lab = sitk.GetImageFromArray(arr)
    lab.CopyInformation(img)
    ct = sitk.GetImageFromArray(np.where(ball, 30.0, 100.0).astype(np.float32))
    ct.CopyInformation(img)
    (row,) = lesions.measure_lesions(lab, ct)
    assert row["volume_ml"] == pytest.approx(4 / 3 * np.pi * 1000 / 1000, rel=0.03)
    np.testing.assert_allclose(row["centroid_ras"], [-30.0, -40.0, 50.0], atol=1e-6)  # LPS (30, 40, 50) in RAS
    assert row["max_diameter_mm"] == pytest.approx(21.0, abs=1.0)
    assert row["mean_hu"] == pytest.approx(30.0)


def test_given_liver_mask_is_used_as_is(phantom_run):
    ph, den, _ = phantom_run
    truth = sitk.Cast(sitk.BinaryThreshold(ph.truth_tissue, 1, 4), sitk.sitkUInt8)
    res = tissue_model.segment_tissues(den, ph.landmarks, truth, n_classes=3)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(res.liver_mask), sitk.GetArrayViewFromImage(truth))
    assert res.model.n_classes == 3


def test_without_landmarks_the_right_upper_abdomen_heuristic_finds_the_liver(phantom_run):
    from LiverLocalizationLib import liver

    ph, den, _ = phantom_run
    mask = liver.extract_liver(den, None)
    truth = np.isin(sitk.GetArrayViewFromImage(ph.truth_tissue), labels.TRUTH_LIVER)
    assert metrics.dice(mask, truth) >= 0.90


@pytest.mark.slow
def test_oblique_phantom_keeps_geometry_and_accuracy():
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(12, size="small", oblique=True, n_lesions=2, lesion_kinds=("cyst",))
    res = tissue_model.segment_tissues(denoise.denoise(ph.ct, "curvature"), ph.landmarks)
    assert _same_geometry_exactly(res.tissue, ph.ct) and _same_geometry_exactly(res.lesion_labels, ph.ct)
    truth = np.isin(sitk.GetArrayViewFromImage(ph.truth_tissue), labels.TRUTH_LIVER)
    assert metrics.dice(res.liver_mask, truth) >= 0.93


def test_real_crop_liver_dice(ircadb_crop_dir):
    ct = io.read_image(ircadb_crop_dir / "ct.nii.gz")
    landmarks = io.read_markups(ircadb_crop_dir / "landmarks.mrk.json")
    truth = io.read_image(ircadb_crop_dir / "mask_liver.nii.gz")
    res = tissue_model.segment_tissues(denoise.denoise(ct, "curvature"), landmarks)
    # 0.916 measured (0.914 before separate_at_necks cut a duodenal leak); 0.908 without the surface tumour that
    # soft_tissue_in_concavities brings in (measured before that)
    assert metrics.dice(res.liver_mask, sitk.GetArrayViewFromImage(truth) > 0) >= 0.91


# ------------------------------------------------------------------------------------------ bad input

@pytest.fixture(scope="module")
def small_ct():
    rng = np.random.default_rng(0)
    arr = np.full((20, 40, 40), -1000.0, np.float32)
    arr[2:18, 10:35, 10:35] = 40.0 + rng.normal(0, 10, (16, 25, 25))
    arr[5:15, 15:30, 15:30] = 105.0 + rng.normal(0, 10, (10, 15, 15))
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.5))
    return img


def test_landmark_outside_the_image_is_an_input_error(small_ct):
    with pytest.raises(InputError, match="outside the CT"):
        tissue_model.segment_tissues(small_ct, {"IVC": np.array([500.0, 0.0, 0.0])})


def test_landmark_in_air_is_an_input_error(small_ct):
    air = geometry.index_to_lps(small_ct, [0, 0, 0])  # 20 mm from the body
    with pytest.raises(InputError, match="not in or near soft tissue"):
        tissue_model.segment_tissues(small_ct, {"IVC": air})


def test_landmarks_mirrored_to_the_patients_left_are_an_input_error():
    """RAS points read as LPS (x and y negated): on phantom 3 they stay inside the CT and near soft tissue,
    so only the side check catches them; the true landmarks pass, and so do they on a CT cropped round the
    liver, where the body's middle is not known and nothing is checked."""
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(3, size="small")
    liver_extraction.check_landmarks_inside(ph.ct, ph.landmarks)
    mirrored = {k: v * np.array([-1.0, -1.0, 1.0]) for k, v in ph.landmarks.items()}
    for name, point in mirrored.items():  # inside the image and in soft tissue: the older checks pass them
        index = geometry.lps_to_index(ph.ct, point)
        assert np.all(index >= 0) and np.all(index <= np.asarray(ph.ct.GetSize()) - 1), name
    with pytest.raises(InputError, match=r"IVC, RHV, RPV lie on the patient's left, \d+ mm .*coordinate system"):
        tissue_model.segment_tissues(ph.ct, mirrored)
    box = np.argwhere(np.isin(sitk.GetArrayViewFromImage(ph.truth_tissue), labels.TRUTH_LIVER))
    lo, hi = box.min(axis=0) + 5, box.max(axis=0) - 5  # a crop inside the liver's box: the body fills its width
    cropped = ph.ct[int(lo[2]):int(hi[2]), int(lo[1]):int(hi[1]), int(lo[0]):int(hi[0])]
    size = np.asarray(cropped.GetSize()) - 1
    inside = {k: v for k, v in ph.landmarks.items()
              if np.all(geometry.lps_to_index(cropped, v) >= 0) and np.all(geometry.lps_to_index(cropped, v) <= size)}
    assert liver_extraction.body_midline_x(cropped, float(np.mean([v[2] for v in inside.values()]))) is None
    liver_extraction.check_landmarks_on_the_right(cropped, inside)


def test_liver_mask_of_another_geometry_is_an_input_error(small_ct):
    mask = sitk.Image(small_ct.GetSize(), sitk.sitkUInt8)
    mask.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="geometry"):
        tissue_model.segment_tissues(small_ct, None, mask)


def test_empty_liver_mask_is_an_input_error(small_ct):
    mask = sitk.Image(small_ct.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(small_ct)
    with pytest.raises(InputError, match="empty"):
        tissue_model.segment_tissues(small_ct, None, mask)


@pytest.mark.parametrize("problem", ["2d", "constant", "nan"])
def test_bad_volumes_are_input_errors(problem, small_ct):
    if problem == "2d":
        img = sitk.Image(64, 64, sitk.sitkFloat32)
    else:
        arr = sitk.GetArrayFromImage(small_ct)
        arr[:] = 50.0 if problem == "constant" else arr
        if problem == "nan":
            arr[3, 3, 3] = np.nan
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(small_ct)
    with pytest.raises(InputError):
        tissue_model.segment_tissues(img, None)


def _synthetic_liver(seed: int = 0):
    """A 60 × 80 × 80 mm block of parenchyma (100 HU, noise sd 5) at 1 mm, with an interior lesion (r 7 mm,
    40 HU) and a dark partial-volume streak (60 HU) along one of the block's edges (an ellipsoid of radii
    15, 5, 5 mm centred 4 mm inside both faces: a third of its shell near the border, less than a quarter
    outside the liver)."""
    rng = np.random.default_rng(seed)
    shape = (60, 80, 80)
    arr = (100.0 + rng.normal(0, 5, shape)).astype(np.float32)
    liver = np.zeros(shape, bool)
    liver[2:-2, 2:-2, 2:-2] = True
    zz, yy, xx = np.indices(shape)
    tumour = (zz - 30) ** 2 + (yy - 40) ** 2 + (xx - 40) ** 2 <= 7 ** 2
    arr[tumour] = 40.0 + rng.normal(0, 5, int(tumour.sum()))
    band = liver & (((zz - 30) / 3.0) ** 2 + (yy - 6) ** 2 + (xx - 6) ** 2 <= 5 ** 2)
    arr[band] = 60.0 + rng.normal(0, 5, int(band.sum()))
    return arr, liver, tumour, band


def test_surface_band_candidates_are_rejected_and_interior_lesions_kept():
    arr, liver, tumour, band = _synthetic_liver()
    model, _ = lesions.liver_mixture(arr[liver])
    found, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0))
    assert found.max() == 1, f"expected only the interior lesion, found {found.max()} instances"
    assert metrics.dice(found > 0, tumour) >= 0.9
    assert not (found > 0)[band].any()
    # without the surface-band test the partial-volume streak is reported as a second lesion
    found_all, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0), surface_depth_ratio=0.0)
    assert found_all.max() == 2


def test_the_surface_band_is_counted_in_pixels_on_coarse_grids():
    """The same voxels read as 2 mm pixels: a band of 3 mm is then only 1.5 pixels and lets the partial-volume
    streak through; a band of 3 pixels (what 3 mm is at 1 mm) rejects it again and keeps the interior lesion."""
    arr, liver, tumour, band = _synthetic_liver()
    model, _ = lesions.liver_mixture(arr[liver])
    fixed, _ = lesions.classify_voxels(arr, None, liver, model, (2.0, 2.0, 2.0), surface_band_pixels=0.0)
    assert fixed.max() == 2 and (fixed > 0)[band].any()
    scaled, _ = lesions.classify_voxels(arr, None, liver, model, (2.0, 2.0, 2.0), surface_band_pixels=3.0)
    assert scaled.max() == 1 and not (scaled > 0)[band].any()
    assert metrics.dice(scaled > 0, tumour) >= 0.9


def _ball(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def test_a_cyst_bulging_from_the_liver_surface_is_kept():
    """A 10 mm-radius cyst 7 mm inside a face of the block, with the liver's border traced around its outer half
    (as a liver mask does at a bulging lesion): a lesion although much of its shell lies on the border (the rule
    that drops gallbladder and partial volume spares balls)."""
    rng = np.random.default_rng(1)
    shape = (60, 80, 80)
    arr = (100.0 + rng.normal(0, 5, shape)).astype(np.float32)
    liver = np.zeros(shape, bool)
    liver[2:-2, 2:-2, 2:-2] = True  # the face is at x = 2
    xx = np.indices(shape)[2]
    liver &= ~((xx < 8) & _ball(shape, (30, 40, 9), 13) & ~_ball(shape, (30, 40, 9), 10))
    cyst = _ball(shape, (30, 40, 9), 10) & liver
    arr[cyst] = 10.0 + rng.normal(0, 5, int(cyst.sum()))
    shell = ndimage.binary_dilation(cyst) & ~cyst
    assert (shell & ~liver).sum() / shell.sum() > 0.35  # beyond max_outside_contact: the old rule dropped it
    model, _ = lesions.liver_mixture(arr[liver])
    found, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0))
    assert found.max() == 1
    assert metrics.dice(found > 0, cyst) >= 0.85
    # asked to be a ball it cannot be, neither as a lesion nor as a cyst, it is dropped
    dropped, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0), min_ball=2.0, cyst_min_ball=2.0)
    assert dropped.max() == 0


def test_a_cyst_cut_by_the_liver_surface_and_ringed_by_its_border_is_kept():
    """A 10 mm-radius cyst whose centre lies 3 mm inside the liver's face (x = 2, fat beyond), the liver mask's
    border traced round its outer part (as at a bulging cyst) and blurred by 0.8 mm: 61 % of its shell lies
    outside, and the face cuts it so that its dark region's inscribed radius is just under 0.75 of its equivalent
    radius (phantoms 809 and 813: 0.735 and 0.746), no ball by `min_ball`. It is fluid and embedded in the
    parenchyma: a cyst by `cyst_min_ball` (0.7). Asked to be a ball by 0.75, it is dropped."""
    rng = np.random.default_rng(1)
    shape = (60, 80, 80)
    clean = np.full(shape, 105.0, np.float32)
    clean[:, :, :2] = -100.0
    liver = np.zeros(shape, bool)
    liver[2:-2, 2:-2, 2:-2] = True
    zz, yy, xx = np.indices(shape)
    r = np.sqrt((zz - 30) ** 2 + (yy - 40) ** 2 + (xx - 5) ** 2)
    liver &= ~((xx < 8) & (r > 10.0) & (r <= 13.0))
    cyst = (r <= 10.0) & liver
    clean[cyst] = 10.0
    arr = (ndimage.gaussian_filter(clean, 0.8) + rng.normal(0, 5, shape)).astype(np.float32)
    shell = ndimage.binary_dilation(cyst) & ~cyst
    assert (shell & ~liver).sum() / shell.sum() > 0.5
    model, _ = lesions.liver_mixture(arr[liver])
    found, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0))
    assert found.max() == 1 and metrics.dice(found > 0, cyst) >= 0.9
    strict, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0), cyst_min_ball=0.75)
    assert strict.max() == 0


def test_fragments_of_one_lesion_become_one_instance():
    shape = (40, 40, 60)
    liver = np.ones(shape, bool)
    parts = np.zeros(shape, np.int32)
    parts[_ball(shape, (20, 20, 20), 5)] = 1
    parts[_ball(shape, (20, 20, 32), 5)] = 2  # 2 mm of parenchyma between the two parts
    parts[_ball(shape, (20, 20, 52), 3)] = 3  # 12 mm from the second part: another lesion
    merged = lesions.merge_fragments(parts, liver, (1.0, 1.0, 1.0), gap_mm=4.0)
    assert merged[20, 20, 20] == merged[20, 20, 32] != 0
    assert merged[20, 20, 26] == merged[20, 20, 20]  # the gap between the parts joins the lesion
    assert merged[20, 20, 52] not in (0, merged[20, 20, 20])
    assert len(np.unique(merged)) == 3  # background and two lesions
    assert lesions.merge_fragments(parts, liver, (1.0, 1.0, 1.0), gap_mm=0.0) is parts


def test_two_whole_tumours_closer_than_the_merge_gap_stay_two_and_a_fragment_joins_the_nearest():
    """Phantom 409's metastases of 45 and 32 mm lay 2-3 mm apart and were one instance; fragments of one tumour
    (inscribed radii 1.6-9.2 mm on 97 cached phantoms, never two whole parts in a group) still merge (the test
    above)."""
    shape = (50, 50, 90)
    liver = np.ones(shape, bool)
    parts = np.zeros(shape, np.int32)
    parts[_ball(shape, (25, 25, 20), 14)] = 1
    parts[_ball(shape, (25, 25, 47), 10)] = 2  # 3 mm of parenchyma between the two tumours
    parts[_ball(shape, (25, 25, 61), 2)] = 3  # a 2 mm fragment 2 mm beyond the second tumour
    merged = lesions.merge_fragments(parts, liver, (1.0, 1.0, 1.0), gap_mm=4.0)
    assert len(np.unique(merged)) == 3  # background and two lesions
    assert merged[25, 25, 20] not in (0, merged[25, 25, 47])
    assert merged[25, 25, 61] == merged[25, 25, 47]
    assert merged[25, 25, 35] == 0  # no closing across the gap between the tumours
    one = lesions.merge_fragments(parts, liver, (1.0, 1.0, 1.0), gap_mm=4.0, whole_radius_mm=0.0)
    assert len(np.unique(one)) == 2  # the case to solve: without the split, one lesion


def test_a_subcapsular_cyst_joined_to_the_body_wall_stays_in_the_liver():
    """liver.dark_regions: a fluid ball at the liver's surface touching a muscle-dark wall is one dark component
    with little parenchyma contact; its fluid part is accepted, the wall is not."""
    from LiverLocalizationLib import liver as liver_module

    shape = (60, 80, 80)
    arr = np.full(shape, 110.0, np.float32)
    parenchyma = np.zeros(shape, bool)
    parenchyma[5:55, 5:75, 12:75] = True
    wall = np.zeros(shape, bool)
    wall[:, :, 2:12] = True  # 50 HU muscle along the liver's face at x = 12
    arr[wall] = 50.0
    arr[:, :, :2] = -100.0
    cyst = _ball(shape, (30, 40, 18), 9) & ~wall
    arr[cyst] = 10.0
    parenchyma &= ~cyst
    filled = liver_module.fill_holes(parenchyma)
    # the old rule (no second chance) rejects the whole component, cyst included
    _, rejected_old = liver_module.dark_regions(arr, parenchyma, filled, 110.0, 14.0, (1.0, 1.0, 1.0), min_fluid_ml=1e9)
    assert rejected_old[cyst].mean() > 0.9
    accepted, rejected = liver_module.dark_regions(arr, parenchyma, filled, 110.0, 14.0, (1.0, 1.0, 1.0))
    assert accepted[cyst].mean() > 0.9
    assert not accepted[wall & ~_ball(shape, (30, 40, 18), 11)].any()
    # on a noisy grid (sd 22.6 HU) 5 sds below the parenchyma is under 0 HU; a 14 HU cyst is fluid all the same
    # (the 30 HU floor), and without the floor it was left out (the wall, at 35 HU, is dark at that sd too)
    arr[cyst], arr[wall] = 14.0, 35.0
    accepted, _ = liver_module.dark_regions(arr, parenchyma, filled, 110.0, 22.6, (1.0, 1.0, 1.0))
    assert accepted[cyst].mean() > 0.9
    accepted, _ = liver_module.dark_regions(arr, parenchyma, filled, 110.0, 22.6, (1.0, 1.0, 1.0),
                                            fluid_floor_hu=-np.inf)
    assert accepted[cyst].mean() < 0.1


def test_half_maximum_edge_puts_the_border_where_the_voxel_is_mostly_liver():
    """A blurred 110 HU block in fat: a mask one voxel too small in-plane grows back to the true border, and no
    further (the next ring out is mostly fat)."""
    from LiverLocalizationLib import liver as liver_module

    shape = (20, 60, 60)
    truth = np.zeros(shape, bool)
    truth[2:-2, 15:45, 12:48] = True
    arr = np.where(truth, 110.0, -100.0).astype(np.float32)
    arr = ndimage.gaussian_filter(arr, sigma=(0, 0.8, 0.8)) + np.random.default_rng(0).normal(0, 8, shape)
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)
    small = ndimage.binary_erosion(truth, structure=plane)
    grown = liver_module.half_maximum_edge(arr, small, 110.0, (2.0, 0.7, 0.7))
    assert metrics.dice(small, truth) < 0.95
    assert metrics.dice(grown, truth) > 0.99
    assert not (grown & ~ndimage.binary_dilation(truth, structure=plane)).any()


def test_extend_margins_adds_the_edge_and_the_enhancing_rim_of_solid_lesions():
    """A solid lesion: dark core (radius 7 mm, 60 HU) inside a brighter rim (7-9 mm, 125 HU) in parenchyma
    (100 HU); detected as its core. Its extent becomes the ball of 9 mm and stops there; a cyst (5 HU) keeps
    its border; bright voxels of the vessel mask join only within the plain margin; nothing leaves the liver."""
    rng = np.random.default_rng(3)
    shape = (50, 50, 90)
    zz, yy, xx = np.indices(shape)
    arr = (100.0 + rng.normal(0, 3, shape)).astype(np.float32)
    r = np.sqrt((zz - 25) ** 2 + (yy - 25) ** 2 + (xx - 25) ** 2)
    arr[r < 9] = 125.0
    arr[r < 7] = 60.0
    rc = np.sqrt((zz - 25) ** 2 + (yy - 25) ** 2 + (xx - 65) ** 2)
    arr[rc < 8] = 5.0
    liver = np.ones(shape, bool)
    start = np.zeros(shape, np.uint16)
    start[r < 7] = 1
    start[rc < 8] = 2
    none = np.zeros(shape, bool)
    grown = lesions.extend_margins(start, arr, liver, none, (1.0, 1.0, 1.0))
    truth = r < 9
    assert metrics.dice(start == 1, truth) < 0.7
    assert metrics.dice(grown == 1, truth) >= 0.95
    assert not (grown == 1)[r > 9.5].any()  # stops where the rim ends
    assert np.array_equal(grown == 2, start == 2)  # the cyst keeps its border (a sharp edge: nothing to trim)
    assert grown.dtype == start.dtype and np.array_equal(grown[start > 0], start[start > 0])

    vessel = (r >= 7) & (r < 9) & (xx > 25)  # the rim's right half is hyperdense "vessel": only the margin joins
    grown_v = lesions.extend_margins(start, arr, liver, vessel, (1.0, 1.0, 1.0))
    d = ndimage.distance_transform_edt(start != 1)
    assert (grown_v == 1)[vessel & (d <= 1.5)].all()
    assert not (grown_v == 1)[vessel & (d > 1.5)].any()

    clipped = lesions.extend_margins(start, arr, liver & (xx < 27), none, (1.0, 1.0, 1.0))
    assert not (clipped == 1)[:, :, 27:][~(start == 1)[:, :, 27:]].any()
    assert np.array_equal(lesions.extend_margins(np.zeros(shape, np.uint16), arr, liver, none, (1, 1, 1)),
                          np.zeros(shape))


def test_a_cyst_is_cut_back_to_its_half_contrast_edge_and_solid_lesions_are_not():
    """A blurred cyst (radius 7 mm, 10 HU; 2 mm slices) detected out to where its edge is 0.3 of the way from
    the parenchyma (100 HU), as the hysteresis does: too large. Its extent is cut back to the half-contrast
    edge, near the true ball; with `fluid_edge=None` it keeps its border. A solid lesion beside it does not
    shrink, and a cyst with no parenchyma round it is left as it is."""
    rng = np.random.default_rng(7)
    spacing = (2.0, 1.0, 1.0)
    shape = (30, 50, 90)
    zz, yy, xx = np.indices(shape)
    zmm, ymm, xmm = zz * spacing[0], yy * spacing[1], xx * spacing[2]
    r_cyst = np.sqrt((zmm - 30) ** 2 + (ymm - 25) ** 2 + (xmm - 25) ** 2)
    r_solid = np.sqrt((zmm - 30) ** 2 + (ymm - 25) ** 2 + (xmm - 65) ** 2)
    clean = np.where(r_cyst < 7, 10.0, np.where(r_solid < 7, 60.0, 100.0))
    blurred = ndimage.gaussian_filter(clean, sigma=(1.2 / spacing[0], 1.2, 1.2))
    arr = (blurred + rng.normal(0, 2, shape)).astype(np.float32)
    start = np.zeros(shape, np.uint16)
    start[(blurred < 100 - 0.3 * 90) & (xx < 45)] = 1
    start[(blurred < 100 - 0.3 * 40) & (xx >= 45)] = 2
    liver, none = np.ones(shape, bool), np.zeros(shape, bool)
    truth = r_cyst < 7
    assert (start == 1).sum() > 1.15 * truth.sum()

    grown = lesions.extend_margins(start, arr, liver, none, spacing)
    cyst = grown == 1
    assert 0.9 * truth.sum() <= cyst.sum() <= 1.1 * truth.sum()
    assert metrics.dice(cyst, truth) >= 0.97 and metrics.dice(start == 1, truth) < 0.93
    assert not cyst[~(start == 1)].any()  # only cut back, never grown
    assert np.array_equal(ndimage.binary_fill_holes(cyst), cyst) and ndimage.label(cyst)[1] == 1
    assert ((grown == 2) >= (start == 2)).all()  # the solid lesion does not shrink

    kept = lesions.extend_margins(start, arr, liver, none, spacing, fluid_edge=None)
    assert np.array_equal(kept == 1, start == 1)
    alone = lesions.trim_fluid_edges(start, arr, (start == 1) | (r_cyst < 8.5), spacing)
    assert np.array_equal(alone == 1, start == 1)  # no parenchyma 4-6 mm out: no level to cut at


def _sliced_ball(spacing, inside=40.0, periphery=None, radius=6.0):
    """A dark ball in parenchyma (100 HU) imaged with slices of thickness spacing[0]: each voxel holds the share of
    its slab inside the ball (partial volume), noise sd 2 HU. Returns (intensities, the voxels a quarter or more
    inside: a detected core, the voxels whose centre is inside: the truth)."""
    rng = np.random.default_rng(5)
    shape = tuple(int(40 / s) for s in spacing)
    zz, yy, xx = np.indices(shape).astype(float)
    z, y, x = ((a + 0.5) * s for a, s in zip((zz, yy, xx), spacing, strict=True))
    rxy2 = (y - 20) ** 2 + (x - 20) ** 2
    share = np.zeros(shape)
    for t in np.linspace(-0.45, 0.45, 10):
        share += ((z + t * spacing[0] - 20) ** 2 + rxy2 <= radius ** 2) / 10
    clean = 100.0 - (100.0 - inside) * share
    if periphery is not None:
        r = np.sqrt((z - 20) ** 2 + rxy2)
        clean = np.where((r > radius + 0.5) & (r < radius + 2.5), periphery, clean)
    arr = (clean + rng.normal(0, 2, shape)).astype(np.float32)
    return arr, (share >= 0.25).astype(np.uint16), (z - 20) ** 2 + rxy2 <= radius ** 2


def test_partial_volume_caps_of_a_dark_solid_lesion_on_thick_slices_are_cut():
    """A 12 mm dark ball (40 HU) on 2.5 mm slices: its first and last slices are less than half inside it, darker
    than the parenchyma and part of the detected core, like the voxels on the ball's upper and lower surface that
    are less than half inside; they leave it, which then matches the voxels whose centre is inside. Nothing changes on an isotropic grid, for a lesion with an enhancing periphery (haemangioma), a
    lesion less than 3 sds darker than the parenchyma (HCC), or a cyst (its own edge rule)."""
    thick = (2.5, 0.8, 0.8)
    arr, core, truth = _sliced_ball(thick)
    liver = np.ones(arr.shape, bool)
    cut = lesions.trim_partial_volume_caps(core, arr, liver, thick)
    assert metrics.dice(core > 0, truth) < 0.96 and metrics.dice(cut > 0, truth) >= 0.99
    assert not (cut > core).any()
    dropped = (core > 0) & (cut == 0)
    above, below = np.zeros_like(dropped), np.zeros_like(dropped)
    above[1:], below[:-1] = core[:-1] > 0, core[1:] > 0
    assert dropped.any() and not (dropped & above & below).any()  # only voxels at the top or bottom of the core
    none = np.zeros(arr.shape, bool)
    kept = lesions.extend_margins(core, arr, liver, none, thick, cap_edge=None) > 0
    assert kept.sum() > (lesions.extend_margins(core, arr, liver, none, thick) > 0).sum()

    iso = (1.0, 1.0, 1.0)
    arr_iso, core_iso, _ = _sliced_ball(iso)
    assert np.array_equal(lesions.trim_partial_volume_caps(core_iso, arr_iso, np.ones(arr_iso.shape, bool), iso),
                          core_iso)
    for kwargs in ({"periphery": 125.0}, {"inside": 95.0}, {"inside": 10.0}):
        arr_k, core_k, _ = _sliced_ball(thick, **kwargs)
        assert np.array_equal(lesions.trim_partial_volume_caps(core_k, arr_k, liver, thick), core_k), kwargs


def test_a_faint_lesion_takes_its_mildly_bright_rim_and_a_clearly_dark_one_does_not():
    """Two solid lesions (core radius 6 mm) ringed by the same mildly bright rim (6-8 mm, 0.5 sd above the
    parenchyma): a faint one (2 sds dark, as an HCC) takes the rim into its extent; a clearly dark one (10 sds)
    keeps the plain 1.5 mm margin, as the faint one does with `faint_rim_sd=None` or on voxels coarser in-plane
    than `faint_rim_max_spacing_mm`."""
    rng = np.random.default_rng(11)
    shape = (32, 32, 64)
    zz, yy, xx = np.indices(shape)
    r_faint = np.sqrt((zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2)
    r_dark = np.sqrt((zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 48) ** 2)
    clean = np.full(shape, 100.0)
    clean[(r_faint < 8) | (r_dark < 8)] = 100.5
    clean[r_faint < 6] = 98.0
    clean[r_dark < 6] = 90.0
    arr = (clean + rng.normal(0, 0.15, shape)).astype(np.float32)  # robust sd: its 1 HU floor
    start = np.where(r_faint < 6, 1, np.where(r_dark < 6, 2, 0)).astype(np.uint16)
    liver, none = np.ones(shape, bool), np.zeros(shape, bool)
    grown = lesions.extend_margins(start, arr, liver, none, (1.0, 1.0, 1.0), capsule_mm=0)
    assert metrics.dice(grown == 1, r_faint < 8) >= 0.9
    assert not (grown == 2)[r_dark > 7.6].any()
    plain = lesions.extend_margins(start, arr, liver, none, (1.0, 1.0, 1.0), capsule_mm=0, faint_rim_sd=None)
    assert not (plain == 1)[r_faint > 7.6].any()
    # on voxels coarser in-plane than faint_rim_max_spacing_mm the faint rim is not taken either
    coarse = lesions.extend_margins(start, arr, liver, none, (1.0, 1.0, 1.0), capsule_mm=0,
                                    faint_rim_max_spacing_mm=0.5)
    assert np.array_equal(coarse, plain)


def test_a_lesion_extent_grows_out_to_its_capsule_but_not_into_plain_or_brighter_liver():
    """An HCC: dark core (radius 5 mm, 85 HU), a mosaic zone nearly as bright as the parenchyma (5-9 mm, 97 HU)
    and an enhancing capsule (9-11 mm, 118 HU) in parenchyma (100 HU), detected as its core. Its extent
    reaches the capsule; without the capsule it keeps the plain margin; next to brighter tissue (a gradient,
    not a ring) or inside a ring bright on one side only it does not grow either."""
    rng = np.random.default_rng(4)
    shape = (40, 40, 40)
    zz, yy, xx = np.indices(shape)
    r = np.sqrt((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2)
    noise = rng.normal(0, 3, shape)
    start = (r < 5).astype(np.uint16)
    liver, none = np.ones(shape, bool), np.zeros(shape, bool)

    def extent(arr):
        return lesions.extend_margins(start, arr.astype(np.float32), liver, none, (1.0, 1.0, 1.0)) == 1

    hcc = np.where(r < 5, 85.0, np.where(r < 9, 97.0, np.where(r < 11, 118.0, 100.0))) + noise
    grown = extent(hcc)
    assert metrics.dice(grown, r < 11) >= 0.9
    assert not grown[r > 11.5].any()
    plain = np.where(r < 5, 85.0, np.where(r < 9, 97.0, 100.0)) + noise
    assert not extent(plain)[r > 7].any()
    brighter = np.where(r < 5, 85.0, np.where(r < 9, 97.0, np.where(xx > 29, 118.0, 100.0))) + noise
    assert not extent(brighter)[r > 7].any()
    one_side = np.where(r < 5, 85.0, np.where(r < 9, 97.0, np.where((r < 11) & (xx > 22), 118.0, 100.0))) + noise
    assert not extent(one_side)[r > 7].any()  # a ring open on one side (e.g. a vessel alongside) is no capsule
    ring = (r > 9) & (r <= 11)
    assert lesions.ring_closure((hcc - 100.0) / 3.0, ring, start > 0, (1.0, 1.0, 1.0), 0.3) == 1.0
    assert 0.3 < lesions.ring_closure((one_side - 100.0) / 3.0, ring, start > 0, (1.0, 1.0, 1.0), 0.3) < 0.75


def test_extend_margins_measures_the_margin_in_mm_on_anisotropic_grids():
    """2 mm slices, 1 mm pixels, no rim: a 1.5 mm margin adds the in-plane neighbours, not the next slices."""
    shape = (21, 41, 41)
    arr = np.full(shape, 100.0, np.float32) + np.random.default_rng(1).normal(0, 2, shape).astype(np.float32)
    start = np.zeros(shape, np.uint16)
    start[8:13, 15:26, 15:26] = 1
    arr[start > 0] = 50.0
    grown = lesions.extend_margins(start, arr, np.ones(shape, bool), np.zeros(shape, bool), (2.0, 1.0, 1.0),
                                   margin_mm=1.5, rim_mm=0.0)
    assert (grown[8:13, 14, 15:26] == 1).all() and (grown[8:13, 26, 15:26] == 1).all()
    assert not grown[7].any() and not grown[13].any()
    assert not grown[10, 13].any()



def test_soft_tissue_in_a_concavity_of_the_liver_mask_joins_it():
    """A liver ball (radius 60 mm) whose mask misses a tumour at its surface (70 HU, a bite 40 mm wide and 25 mm
    deep); beside it a fluid bite (10 HU, gallbladder-like), a fat bite and a bright one. Soft tissue of the
    tumour is returned where a 25 mm ball cannot reach into the bite (its deeper part, about half of it by
    volume); the fluid, fat and bright bites, and anything outside the bites, are not."""
    from LiverLocalizationLib import liver as liver_module

    sp = (2.0, 2.0, 2.0)
    shape = (70, 70, 70)
    zz, yy, xx = (np.indices(shape) - 35) * 2.0
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    arr = np.full(shape, -100.0, np.float32)  # fat around
    liver_ball = r < 60
    arr[liver_ball] = 110.0
    bites = {}
    for name, (cy, cx), hu in (("tumour", (0.0, 55.0), 70.0), ("fluid", (0.0, -55.0), 10.0),
                               ("fat", (55.0, 0.0), -80.0), ("bright", (-55.0, 0.0), 180.0)):
        bite = liver_ball & (np.sqrt(zz ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) < 20)
        arr[bite] = hu
        bites[name] = bite
    mask = liver_ball & ~np.any(list(bites.values()), axis=0)
    added = liver_module.soft_tissue_in_concavities(arr, mask, sp, 25.0, soft_hu=(40.0, 95.0))
    assert added.sum() >= 0.4 * bites["tumour"].sum()
    deep = bites["tumour"] & (r < 40)  # the bite's bottom, 15-20 mm below where the ball can reach
    assert added[deep].all()
    assert not (added & ~bites["tumour"]).any()
    assert not liver_module.soft_tissue_in_concavities(arr, mask, sp, 25.0, soft_hu=(40.0, 60.0)).any()
    assert not liver_module.soft_tissue_in_concavities(arr, mask, sp, 6.0, soft_hu=(40.0, 95.0)).any()  # too wide to close


def test_a_heterogeneous_tumour_that_the_mask_surrounds_joins_it_and_a_vessel_in_a_groove_does_not():
    """A liver ball (radius 60 mm, 110 HU) whose mask misses a haemangioma-like ball at its surface (radius 18 mm,
    centred 16 mm under the surface: bright nodules at 160 HU in tissue at 85 HU) and a bright vessel (150 HU, radius 9 mm) lying in a groove of the surface, half in the liver. The
    tumour, mostly surrounded by the mask, is returned; the vessel, touching the mask on one side, is not;
    nor is soft tissue alone (the tumour without its nodules would also be found by
    `soft_tissue_in_concavities`, which misses the nodules)."""
    from LiverLocalizationLib import liver as liver_module

    sp = (2.0, 2.0, 2.0)
    shape = (70, 70, 70)
    zz, yy, xx = (np.indices(shape) - 35) * 2.0
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    arr = np.full(shape, -100.0, np.float32)
    liver_ball = r < 60
    arr[liver_ball] = 110.0
    tumour = liver_ball & (np.sqrt(zz ** 2 + yy ** 2 + (xx - 44.0) ** 2) < 18)
    nodules = tumour & ((np.indices(shape).sum(axis=0) // 2) % 3 == 0)
    arr[tumour] = 85.0
    arr[nodules] = 160.0
    vessel = (np.sqrt(yy ** 2 + (xx + 60.0) ** 2) < 9) & (np.abs(zz) < 40)  # along z, on the surface at x = -60
    arr[vessel] = 150.0
    mask = liver_ball & ~tumour & ~vessel
    added = liver_module.surrounded_tissue_in_concavities(arr, mask, sp, 25.0, 40.0)
    assert added[tumour].mean() >= 0.9
    assert added[nodules].mean() >= 0.9
    assert not added[vessel].any()
    assert not (added & ~tumour).any()
    soft = liver_module.soft_tissue_in_concavities(arr, mask, sp, 25.0, soft_hu=(40.0, 95.0))
    assert not soft[nodules].any()


def test_border_refinement_on_the_box_round_the_mask_equals_the_whole_region(phantom_run, monkeypatch):
    """The full-resolution step works on the mask's box (`_full_resolution_box`) for speed; on the whole
    region of interest it gives the same mask."""
    from LiverLocalizationLib import liver

    ph = phantom_run[0]
    box_of = liver._full_resolution_box
    boxes = []

    def whole_region(liver_small, shrink, roi_size, roi_spacing, margin_mm=12.0):
        boxes.append((box_of(liver_small, shrink, roi_size, roi_spacing, margin_mm)[1], roi_size))
        return [0, 0, 0], [int(v) for v in roi_size]

    boxed = sitk.GetArrayFromImage(liver.extract_liver(ph.ct, ph.landmarks))
    monkeypatch.setattr(liver, "_full_resolution_box", whole_region)
    whole = sitk.GetArrayFromImage(liver.extract_liver(ph.ct, ph.landmarks))
    np.testing.assert_array_equal(boxed, whole)
    box_size, roi_size = boxes[0]
    assert max(r - b for r, b in zip(roi_size, box_size, strict=True)) >= 10  # a real crop, not the whole region


def test_fill_holes_equals_scipy_in_3d_then_per_slice():
    """The labelling version gives exactly scipy's binary_fill_holes on the volume, then on every axial slice."""
    from LiverLocalizationLib import liver as liver_module

    def reference(mask):
        out = ndimage.binary_fill_holes(mask)
        for z in range(out.shape[0]):
            out[z] = ndimage.binary_fill_holes(out[z])
        return out

    rng = np.random.default_rng(0)
    for _ in range(25):
        shape = tuple(int(v) for v in rng.integers(3, 30, 3))
        mask = ndimage.binary_opening(rng.random(shape) < rng.uniform(0.3, 0.8)) | (rng.random(shape) < 0.3)
        np.testing.assert_array_equal(liver_module.fill_holes(mask), reference(mask))
    shell = np.zeros((9, 12, 12), bool)
    shell[1:8, 2:10, 2:10] = True
    shell[2:7, 4:8, 4:8] = False  # a closed cavity: filled in 3-D
    shell[4, 0:6, 5] = False  # a channel to the side in one slice: that slice's part of the cavity stays open
    filled = liver_module.fill_holes(shell)
    assert filled[3, 5, 5] and filled[5, 5, 5] and not filled[4, 5, 5]


def test_fill_enclosed_equals_scipy_binary_fill_holes():
    """`geometry.fill_enclosed` (used by the lesion rules in place of scipy's iterative flooding) fills exactly the
    voxels scipy's binary_fill_holes fills, on random masks whose background touches the faces or not."""
    from LiverLocalizationLib import geometry

    rng = np.random.default_rng(1)
    for _ in range(40):
        shape = tuple(int(v) for v in rng.integers(3, 25, 3))
        mask = ndimage.gaussian_filter(rng.normal(size=shape), rng.uniform(0.5, 2.0)) > rng.uniform(-0.5, 0.5)
        np.testing.assert_array_equal(geometry.fill_enclosed(mask), ndimage.binary_fill_holes(mask))
    ball = np.ones((7, 7, 7), bool)
    ball[3, 3, 3] = False
    assert geometry.fill_enclosed(ball).all() and not geometry.fill_enclosed(~ball)[0, 0, 0]


def _parenchyma_block(seed: int):
    """Parenchyma at 105 HU with smoothed noise of sd 9 HU (as after denoising) on a 40 × 120 × 160 grid of
    2 × 0.7 × 0.7 mm, the liver all but its edge. Returns (arr, liver, noise of sd 1 before scaling, spacing)."""
    rng = np.random.default_rng(seed)
    shape, spacing = (40, 120, 160), np.array([2.0, 0.7, 0.7])
    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.0)
    arr = (105.0 + 9.0 * noise / noise.std()).astype(np.float32)
    liver = np.zeros(shape, bool)
    liver[2:-2, 3:-3, 3:-3] = True
    return arr, liver, noise, spacing


def _capsule_block(seed: int = 3):
    """A block of parenchyma (105 HU, smoothed noise of sd ~9 HU as after denoising) at 2 × 0.7 × 0.7 mm with two
    nodules of radius 10 mm, both 12 HU darker than the parenchyma (about 1.3 sd): one ringed by a 2 mm enhancing
    capsule at 130 HU (an HCC in the portal phase), one without (a dip of the same depth)."""
    arr, liver, noise, spacing = _parenchyma_block(seed)
    zz, yy, xx = np.indices(arr.shape)

    def radius_mm(centre):
        return np.sqrt(((zz - centre[0]) * spacing[0]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2
                       + ((xx - centre[2]) * spacing[2]) ** 2)

    capsule_r, plain_r = radius_mm((20, 60, 45)), radius_mm((20, 60, 115))
    hcc, plain = capsule_r <= 10.0, plain_r <= 10.0
    arr[capsule_r <= 8.0] -= 12.0
    arr[(capsule_r > 8.0) & hcc] = 130.0 + 9.0 * (noise[(capsule_r > 8.0) & hcc] / noise.std())
    arr[plain] -= 12.0
    return arr, liver, hcc, plain, spacing


def test_a_hypodense_nodule_with_an_enhancing_capsule_is_found_and_a_plain_dip_is_not():
    """The capsule rule alone (the dark-ball test off: `ball_contrast_sd=None`) finds the nodule with the
    capsule, not the dip of the same depth without one. With the dark-ball test on, the dip, a 10 mm-radius
    ball 1.3 sd darker than the parenchyma, is a large faint dark ball (`large_ball_mm`) and is found too;
    without that tier it is not."""
    arr, liver, hcc, plain, spacing = _capsule_block()
    none = np.zeros(arr.shape, bool)
    mu, sd = lesions.parenchyma_statistics(arr[liver])

    def capsule_only(values, known=None):
        known = np.zeros(arr.shape, np.uint16) if known is None else known
        return lesions.capsule_lesions(values, liver, none, known, spacing, mu, sd, ball_contrast_sd=None)

    found = capsule_only(arr)
    labelled, n = ndimage.label(found)
    assert n == 1, f"expected the capsule nodule only, found {n} regions"
    assert (found & hcc).sum() / found.sum() >= 0.95  # nothing outside the nodule
    assert (found & hcc).sum() / hcc.sum() >= 0.3  # its dark interior (the margin step adds edge and capsule)
    assert not (found & plain).any()
    # the same block without capsules: nothing (the dark interior alone is not enough)
    arr_plain = arr.copy()
    arr_plain[hcc & (arr > 115)] = 93.0
    assert not capsule_only(arr_plain).any()
    # a nodule already found is left alone
    assert not capsule_only(arr, hcc.astype(np.uint16)).any()
    # the dark-ball test takes the dip as a large faint ball, and only with that tier
    both = lesions.capsule_lesions(arr, liver, none, np.zeros(arr.shape, np.uint16), spacing, mu, sd)
    assert (both & plain).sum() >= 0.5 * plain.sum() and (both & hcc).sum() >= 0.3 * hcc.sum()
    small_only = lesions.capsule_lesions(arr, liver, none, np.zeros(arr.shape, np.uint16), spacing, mu, sd,
                                         large_ball_mm=None)
    assert not (small_only & plain).any()


def test_classify_voxels_adds_capsule_nodules_as_instances_unless_disabled_or_on_coarse_grids():
    """The capsule nodule and the dip (a large faint dark ball) of `_capsule_block` become one instance each."""
    arr, liver, hcc, plain, spacing = _capsule_block()
    model, _ = lesions.liver_mixture(arr[liver])
    found, _ = lesions.classify_voxels(arr, None, liver, model, tuple(spacing[::-1]))
    assert found.max() == 2
    on_hcc, on_plain = np.unique(found[hcc & (found > 0)]), np.unique(found[plain & (found > 0)])
    assert len(on_hcc) == 1 and len(on_plain) == 1 and on_hcc[0] != on_plain[0]
    assert metrics.dice(found == on_hcc[0], hcc) >= 0.4
    without, _ = lesions.classify_voxels(arr, None, liver, model, tuple(spacing[::-1]), capsules=False)
    assert without.max() == 0
    # the search was validated on fine pixels: on a grid coarser than capsule_max_spacing_mm it is skipped
    coarse, _ = lesions.classify_voxels(arr, None, liver, model, tuple(spacing[::-1]), capsule_max_spacing_mm=0.5)
    assert coarse.max() == 0


def _small_haemangioma_block(seed: int = 4):
    """Parenchyma (`_parenchyma_block`) with, deep inside, a small haemangioma of radius 5.5 mm (a dark centre of
    radius 2.5 mm at 55 HU, about 40 mm³, smaller than the smallest lesion core, in a band of enhancing
    nodules at 160 HU and darker tissue at 75 HU), a dark speck of the same size and depth fading into a dim
    surround (90 HU out to 5.5 mm: no sharp edge) and a 10 mm-radius cyst at 10 HU (so that the mixture has a
    hypodense class). Returns (arr, liver, haemangioma, speck, spacing)."""
    arr, liver, noise, spacing = _parenchyma_block(seed)
    zz, yy, xx = np.indices(arr.shape)

    def radius_mm(centre):
        return np.sqrt(((zz - centre[0]) * spacing[0]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2
                       + ((xx - centre[2]) * spacing[2]) ** 2)

    jitter = 9.0 * noise / noise.std()
    rh, rs, rc = radius_mm((20, 60, 40)), radius_mm((20, 60, 85)), radius_mm((20, 60, 130))
    nodules = ndimage.gaussian_filter(np.random.default_rng(seed + 1).normal(size=arr.shape), 2.0) > 0
    band = (rh > 2.5) & (rh <= 5.5)
    arr[band] = np.where(nodules[band], 160.0, 75.0) + jitter[band]
    arr[rh <= 2.5] = 55.0 + jitter[rh <= 2.5]
    arr[(rs > 2.5) & (rs <= 5.5)] = 90.0 + jitter[(rs > 2.5) & (rs <= 5.5)]
    arr[rs <= 2.5] = 55.0 + jitter[rs <= 2.5]
    arr[rc <= 10.0] = 10.0 + jitter[rc <= 10.0] / 3.0
    return arr, liver, rh <= 5.5, rs <= 5.5, spacing


def test_a_small_haemangioma_centre_below_the_core_size_is_a_lesion_and_a_fading_speck_is_not():
    """`sharp_dark_nodules`: a dark centre smaller than `min_lesion_volume_mm3` becomes a core when it is deep and
    sharply bounded (the band of nodules round it at parenchyma level or brighter); a speck fading into a dim
    surround does not; without the rule, or on a grid coarser than `nodule_max_spacing_mm`, neither does the
    haemangioma."""
    arr, liver, haemangioma, speck, spacing = _small_haemangioma_block()
    model, _ = lesions.liver_mixture(arr[liver])
    assert "lesion-hypo" in model.names

    def found(**kwargs):
        cores, _ = lesions.classify_voxels(arr, None, liver, model, tuple(spacing[::-1]), capsules=False, **kwargs)
        return cores

    cores = found()
    assert cores.max() == 2  # the cyst and the haemangioma
    assert (cores[haemangioma] > 0).mean() >= 0.1 and len(np.unique(cores[haemangioma & (cores > 0)])) == 1
    assert not (cores[speck] > 0).any()
    for kwargs in ({"nodule_min_mm3": None}, {"nodule_max_spacing_mm": 0.5}):
        without = found(**kwargs)
        assert without.max() == 1 and not (without[haemangioma] > 0).any()


def _washout_block(seed: int = 5):
    """Parenchyma as in `_capsule_block` with, on its left half, an 8 mm-radius nodule 20 HU darker than the
    parenchyma and without capsule (an HCC whose capsule is too faint to see) and, on its right half, a portal
    branch (a 5 mm-radius tube at 160 HU along z) hugged on one side by a crescent of the same darkness (partial
    volume or fat round a vessel), 4 mm thick and 24 mm long. Returns the block, the liver, the vessel, the
    nodule and the crescent."""
    arr, liver, noise, spacing = _parenchyma_block(seed)
    zz, yy, xx = np.indices(arr.shape)
    nodule = np.sqrt(((zz - 20) * 2.0) ** 2 + ((yy - 60) * 0.7) ** 2 + ((xx - 45) * 0.7) ** 2) <= 8.0
    axis_r = np.sqrt(((yy - 60) * 0.7) ** 2 + ((xx - 115) * 0.7) ** 2)
    vessel = (axis_r <= 5.0) & liver
    crescent = (axis_r > 5.0) & (axis_r <= 9.0) & (xx < 115) & (np.abs(zz - 20) * 2.0 <= 12.0)
    arr[nodule | crescent] -= 20.0
    arr[vessel] = 160.0
    return arr, liver, vessel, nodule, crescent, spacing


def test_a_dark_ball_without_capsule_is_found_and_a_crescent_round_a_vessel_is_not():
    """`capsule_lesions` keeps a candidate without a capsule when it is a ball darker than its surroundings in
    every direction (`lesions._dark_ball`): the nodule is found; the crescent of the same darkness beside the
    vessel is not (round its centre lies the vessel, not dark tissue). Without the ball test
    (`ball_contrast_sd=None`) the nodule is not found either: it has no capsule."""
    arr, liver, vessel, nodule, crescent, spacing = _washout_block()
    mu, sd = lesions.parenchyma_statistics(arr[liver & ~vessel])
    none = np.zeros(arr.shape, np.uint16)
    found = lesions.capsule_lesions(arr, liver, vessel, none, spacing, mu, sd)
    assert (found & nodule).sum() >= 0.9 * nodule.sum()
    assert not (found & crescent).any()
    # the core reaches out to where the surroundings are back at parenchyma level: mostly within 3 mm of it
    beyond = ndimage.distance_transform_edt(~nodule, sampling=spacing) > 3.0
    assert (found & beyond).sum() <= 0.05 * found.sum()
    assert metrics.dice(found, nodule) >= 0.7
    assert not lesions.capsule_lesions(arr, liver, vessel, none, spacing, mu, sd, ball_contrast_sd=None).any()
    # a shallower ball (8 HU, under 1 sd) is left in the parenchyma
    shallow = arr.copy()
    shallow[nodule] += 12.0
    assert not (lesions.capsule_lesions(shallow, liver, vessel, none, spacing, mu, sd) & nodule).any()


def test_a_faint_dark_ball_needs_less_contrast_when_it_is_large():
    """`capsule_cores`' dark-ball test asks 1.5 sd of contrast of a candidate, but only 1.2 sd (and 0.8 instead of
    0.85 of the directions) of one whose equivalent radius is at least `large_ball_mm`: noise makes small dark
    balls, not large ones. Two noise-free balls 1.4 sd darker than the parenchyma, of 8 and 5 mm radius: only the
    large one is found; without the large-ball tier (`large_ball_mm=None`) neither is; 1.7 sd dark, both are."""
    shape, spacing = (40, 140, 220), np.array([2.0, 0.7, 0.7])
    zz, yy, xx = np.indices(shape)
    large = np.sqrt(((zz - 20) * 2.0) ** 2 + ((yy - 70) * 0.7) ** 2 + ((xx - 60) * 0.7) ** 2) <= 8.0
    small = np.sqrt(((zz - 20) * 2.0) ** 2 + ((yy - 70) * 0.7) ** 2 + ((xx - 160) * 0.7) ** 2) <= 5.0
    liver, vessel, none = np.ones(shape, bool), np.zeros(shape, bool), np.zeros(shape, np.uint16)
    mu, sd = 100.0, 10.0

    def found(contrast_sd, **kwargs):
        arr = np.full(shape, mu, np.float32)
        arr[large | small] -= contrast_sd * sd
        return lesions.capsule_lesions(arr, liver, vessel, none, spacing, mu, sd, **kwargs)

    faint = found(1.4)
    assert (faint & large).sum() >= 0.95 * large.sum() and not (faint & small).any()
    assert not found(1.4, large_ball_mm=None).any()
    clear = found(1.7)
    assert (clear & large).sum() >= 0.95 * large.sum() and (clear & small).sum() >= 0.95 * small.sum()


def test_drop_shells_drops_a_sheet_but_keeps_a_porous_tumour_core():
    """A curved sheet 2 mm thick (the fat cap round a kidney pole) is dropped; a 12 mm-radius ball riddled with
    1-voxel pores (the core of a mosaic HCC, whose brighter patches are not hypodense) is kept, although its own
    inscribed radius is small."""
    shape, spacing = (40, 120, 120), (2.0, 0.7, 0.7)
    zz, yy, xx = np.indices(shape)
    r = np.sqrt(((zz - 20) * 2.0) ** 2 + ((yy - 60) * 0.7) ** 2 + ((xx - 60) * 0.7) ** 2)
    sheet = (r > 20.0) & (r <= 22.0) & (zz < 20)
    ball = r <= 12.0
    pores = np.random.default_rng(0).random(shape) < 0.35
    porous = ball & ~pores
    assert not lesions._is_ball(porous, spacing, 0.4, 0.0)  # without the closing it would count as a shell
    lesion = np.zeros(shape, np.int32)
    lesion[sheet] = 1
    kept = lesions.drop_shells(lesion.copy(), spacing)
    assert kept.max() == 0
    lesion = porous.astype(np.int32)
    kept = lesions.drop_shells(lesion.copy(), spacing)
    assert (kept == 1).sum() == porous.sum()
    assert lesions.drop_shells(lesion.copy(), spacing, pore_mm=0).max() == 0


def test_drop_shells_keeps_an_elongated_porous_core_that_closes_to_half_its_radius():
    """A porous core (35 % one-voxel pores) of an elongated tumour, semi-axes 7, 7 and 30 mm: closed, its
    inscribed radius is 0.55 of its equivalent radius (phantom 401's 27 mm mosaic HCC: 0.56). Kept with
    `solid_ratio` 0.5, dropped with 0.6 (the value before); a thinner one (6 mm: 0.42) is dropped."""
    shape, spacing = (40, 120, 200), (2.0, 0.7, 0.7)
    zz, yy, xx = np.indices(shape)
    pores = np.random.default_rng(0).random(shape) < 0.35

    def core(a_mm):
        body = ((zz - 20) * 2.0 / a_mm) ** 2 + ((yy - 60) * 0.7 / a_mm) ** 2 + ((xx - 100) * 0.7 / 30.0) ** 2 <= 1
        return (body & ~pores).astype(np.int32)

    thick, thin = core(7.0), core(6.0)
    assert (lesions.drop_shells(thick.copy(), spacing) == 1).sum() == thick.sum()
    assert lesions.drop_shells(thick.copy(), spacing, solid_ratio=0.6).max() == 0
    assert lesions.drop_shells(thin.copy(), spacing).max() == 0


def test_drop_shells_keeps_a_large_lobulated_tumour_whose_ratio_is_low():
    """A cluster of 5 × 5 confluent 6.5 mm-radius nodules (a lobulated tumour, as on 3D-IRCADb 1.1) has an
    inscribed radius below 0.4 of its equivalent radius, the ratio of a shell, but is 13 mm thick: kept. A sheet
    of the same extent 3 mm thick is dropped."""
    shape, spacing = (30, 130, 130), (2.0, 0.7, 0.7)
    zz, yy, xx = np.indices(shape)
    z_mm, y_mm, x_mm = zz * 2.0, yy * 0.7, xx * 0.7
    lobes = np.zeros(shape, bool)
    centres = 20.0 + 13.0 * np.arange(5)
    for cy in centres:
        for cx in centres:
            lobes |= (z_mm - 30.0) ** 2 + (y_mm - cy) ** 2 + (x_mm - cx) ** 2 <= 6.5 ** 2
    within = (y_mm >= 20) & (y_mm <= 72) & (x_mm >= 20) & (x_mm <= 72)
    on_grid = (np.abs((y_mm - 20.0 + 6.5) % 13.0 - 6.5) <= 3.0) | (np.abs((x_mm - 20.0 + 6.5) % 13.0 - 6.5) <= 3.0)
    lobes |= (np.abs(z_mm - 30.0) <= 4.0) & within & on_grid
    r_eq = lesions._equivalent_radius_mm(int(lobes.sum()), 2.0 * 0.7 * 0.7)
    inscribed = lesions._inscribed_radius_mm(lobes, spacing)
    assert inscribed < 0.4 * r_eq and inscribed >= 5.0, (inscribed, r_eq)
    kept = lesions.drop_shells(lobes.astype(np.int32), spacing)
    assert (kept == 1).sum() == lobes.sum()
    assert lesions.drop_shells(lobes.astype(np.int32), spacing, thin_mm=np.inf).max() == 0  # the ratio alone
    sheet = (np.abs(z_mm - 30.0) <= 1.5) & (y_mm >= 14) & (y_mm <= 78) & (x_mm >= 14) & (x_mm <= 78)
    assert lesions.drop_shells(sheet.astype(np.int32), spacing).max() == 0


def test_a_tumour_touching_the_gallbladder_is_found_and_the_gallbladder_is_not():
    """A 9 mm-radius metastasis (60 HU) touching a 3 mm layer of fluid (10 HU, 50 × 50 mm: gallbladder inside
    the liver mask's face): in the hypodense mask they form one region, 42 % of whose shell lies outside the
    liver. The fluid and soft-tissue parts are judged apart: the tumour is a lesion, the fluid is not."""
    rng = np.random.default_rng(4)
    shape = (60, 90, 90)
    arr = (105.0 + rng.normal(0, 5, shape)).astype(np.float32)
    liver = np.zeros(shape, bool)
    liver[2:-2, 2:-2, 2:-2] = True  # the face is at x = 2
    fluid = np.zeros(shape, bool)
    fluid[5:55, 20:70, 2:5] = True
    tumour = _ball(shape, (30, 45, 14), 9)
    arr[fluid] = 10.0 + rng.normal(0, 5, int(fluid.sum()))
    arr[tumour] = 60.0 + rng.normal(0, 5, int(tumour.sum()))
    model, _ = lesions.liver_mixture(arr[liver])
    found, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0))
    assert found.max() == 1, f"expected the tumour only, found {found.max()} instances"
    assert metrics.dice(found > 0, tumour) >= 0.85
    assert (found > 0)[fluid].mean() < 0.05
    # judged as one region (no second chance) both are dropped
    merged, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0), fluid_hu=None)
    assert merged.max() == 0



def test_a_cyst_merged_with_dark_tissue_at_the_surface_is_judged_with_its_own_seam():
    """A 10 mm-radius cyst (10 HU) bulging from the liver mask's face at x = 2, beside a 4 mm layer of dark soft
    tissue (60 HU) inside the mask along that face; blurred (sigma 1 mm: partial volume). In the hypodense mask
    they form one region, neither fluid on average nor a ball, that fails the contact test and is split. The
    fluid part, opened by 2 mm, has its own blurred border around it: counted as outside, that seam made 98 % of
    its shell 'outside' and the cyst was lost (fresh phantom 400: a 20 mm cyst). Judged with its seam, it is a
    cyst that bulges from the surface; the layer is no lesion of its own."""
    rng = np.random.default_rng(1)
    shape = (60, 90, 90)
    clean = np.full(shape, 105.0, np.float32)
    clean[:, :, :2] = -100.0  # fat beyond the face
    liver = np.zeros(shape, bool)
    liver[2:-2, 2:-2, 2:] = True
    cyst = _ball(shape, (30, 45, 8), 10)
    layer = np.zeros(shape, bool)
    layer[10:50, 45:80, 2:6] = True
    layer &= ~cyst
    clean[layer] = 60.0
    clean[cyst] = 10.0
    arr = (ndimage.gaussian_filter(clean, 1.0) + rng.normal(0, 5, shape)).astype(np.float32)
    model, _ = lesions.liver_mixture(arr[liver])
    found, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0))
    assert found.max() == 1, f"expected the cyst only, found {found.max()} instances"
    assert metrics.dice(found > 0, cyst & liver) >= 0.75
    assert (found > 0)[layer].mean() < 0.3

def _kidney_pole_block(with_tumour: bool, seed: int = 5):
    """A block of parenchyma (105 HU, noise sd 5) at 1 mm whose face at x = 2 a kidney pole (r 28 mm, 160 HU)
    presses into; its fat capsule (4 mm, -100 HU) lies inside the liver mask, as where a mask wraps round the
    kidney; optionally a metastasis (r 6 mm, 60 HU) 1 mm from the fat. Blurred (sigma 0.8 mm): partial volume."""
    rng = np.random.default_rng(seed)
    shape = (60, 90, 90)
    clean = np.full(shape, 105.0, np.float32)
    liver = np.zeros(shape, bool)
    liver[2:-2, 2:-2, 2:-2] = True
    kidney = _ball(shape, (30, 45, -10), 28)
    fat = _ball(shape, (30, 45, -10), 32) & ~kidney
    clean[fat] = -100.0
    clean[kidney] = 160.0
    liver &= ~kidney
    tumour = _ball(shape, (30, 45, 29), 6) if with_tumour else np.zeros(shape, bool)
    clean[tumour] = 60.0
    arr = (ndimage.gaussian_filter(clean, 0.8) + rng.normal(0, 5, shape)).astype(np.float32)
    return arr, liver, tumour


def test_fat_inside_the_liver_mask_is_no_lesion_and_does_not_hide_one():
    """The fat capsule and its partial-volume rim form one dark region with the metastasis beside it; that region
    was a shell and was dropped with the tumour in it (fresh phantom 308: a 13 mm metastasis). Fat in the mask
    now counts as outside the liver and the 1.5 mm seam round it is no lesion core: the tumour is found, with no
    fat in it, and the capsule alone gives nothing."""
    arr, liver, tumour = _kidney_pole_block(with_tumour=True)
    model, _ = lesions.liver_mixture(arr[liver])
    found, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0))
    assert found.max() == 1, f"expected the tumour only, found {found.max()} instances"
    assert metrics.dice(found > 0, tumour) >= 0.8
    assert arr[found > 0].min() > lesions.FAT_MEAN_HU
    arr, liver, _ = _kidney_pole_block(with_tumour=False)
    found, _ = lesions.classify_voxels(arr, None, liver, model, (1.0, 1.0, 1.0))
    assert found.max() == 0


def _thin_lobe(fluid_centre_z_mm: float, fluid_radius_mm: float):
    """A 28 mm-thick slab of parenchyma (105 HU) in fat on a 2.5 mm grid (the liver extraction's working grid),
    with a fluid ball (10 HU) centred at height fluid_centre_z_mm (the slab spans 36-64 mm); blurred (partial
    volume). Returns (arr, parenchyma, fluid)."""
    zz, yy, xx = np.indices((40, 60, 60)) * 2.5
    clean = np.full(zz.shape, -100.0, np.float32)
    lobe = (np.abs(zz - 50.0) <= 14.0) & (yy > 20) & (yy < 130) & (xx > 20) & (xx < 130)
    fluid = (zz - fluid_centre_z_mm) ** 2 + (yy - 75.0) ** 2 + (xx - 75.0) ** 2 <= fluid_radius_mm ** 2
    clean[lobe] = 105.0
    clean[fluid] = 10.0
    arr = ndimage.gaussian_filter(clean, 0.5)
    return arr, lobe & ~fluid & (arr > 81.0), fluid


def test_a_cyst_filling_a_thin_lobe_joins_the_liver_and_a_gallbladder_on_its_face_does_not():
    """liver.dark_regions: a 40 mm cyst in a 28 mm lobe bulges from both faces; the 15 mm envelope closing
    cannot span it (3 % of it inside), but it is embedded in the parenchyma (fresh phantom 402: a 34 mm cyst
    was left out of the liver). A fluid ball lying on the lobe's face (gallbladder) stays out."""
    from LiverLocalizationLib import liver as liver_module

    sp = (2.5, 2.5, 2.5)
    arr, parenchyma, cyst = _thin_lobe(50.0, 20.0)
    assert geometry.close_mm(parenchyma, 15.0, sp)[cyst].mean() < 0.5  # the envelope alone would not take it
    accepted, rejected = liver_module.dark_regions(arr, parenchyma, liver_module.fill_holes(parenchyma), 105.0, 8.0, sp)
    assert accepted[cyst].mean() > 0.95 and not rejected[cyst].any()
    arr, parenchyma, gallbladder = _thin_lobe(72.0, 15.0)
    accepted, rejected = liver_module.dark_regions(arr, parenchyma, liver_module.fill_holes(parenchyma), 105.0, 8.0, sp)
    assert not accepted[gallbladder].any()


def test_embedded_in_parenchyma_tells_a_cyst_in_a_lobe_from_fluid_on_its_face():
    sp = (2.5, 2.5, 2.5)
    _, parenchyma, cyst = _thin_lobe(50.0, 20.0)
    assert lesions.embedded_in_parenchyma(cyst, parenchyma, sp)
    _, parenchyma, gallbladder = _thin_lobe(72.0, 15.0)
    assert not lesions.embedded_in_parenchyma(gallbladder, parenchyma, sp)
    # contact alone is not enough: parenchyma must lie round the blob in enough directions
    _, parenchyma, cyst = _thin_lobe(50.0, 20.0)
    assert not lesions.embedded_in_parenchyma(cyst, parenchyma, sp, min_closure=0.9)


def test_thin_parenchyma_over_a_tumour_joins_the_liver_and_a_neighbour_or_a_rod_does_not():
    """liver.thin_attached_parts on the 2.5 mm working grid. Liver-like candidate tissue: a thick block (the liver,
    with a core after the 6 mm erosion) holding a 20 mm-radius tumour (not liver-like) under a 5 mm layer of
    parenchyma at its face, a ball (another organ, with its own core) joined to the block by a 7.5 mm neck, and a
    7.5 mm rod standing on another face (a vessel or bowel wall of liver-like density). The dilation that undoes
    the erosion does not reach the middle of the layer; that part joins, the organ and the rod do not, and with
    the layer the liver encloses the tumour."""
    from LiverLocalizationLib import liver as liver_module

    sp = np.array([2.5, 2.5, 2.5])
    zz, yy, xx = np.indices((48, 64, 64)) * 2.5
    block = (np.abs(zz - 60) <= 30) & (np.abs(yy - 60) <= 30) & (np.abs(xx - 60) <= 30)  # its face at x = 90
    tumour = (zz - 60) ** 2 + (yy - 60) ** 2 + (xx - 65) ** 2 <= 20 ** 2
    layer = block & ~tumour & (xx > 65) & ((zz - 60) ** 2 + (yy - 60) ** 2 < 15 ** 2)
    organ = (zz - 60) ** 2 + (yy - 135) ** 2 + (xx - 60) ** 2 <= 20 ** 2
    neck = (np.abs(zz - 60) <= 3.75) & (np.abs(xx - 60) <= 3.75) & (yy > 90) & (yy < 118)
    rod = (np.abs(zz - 60) <= 3.75) & (np.abs(yy - 60) <= 3.75) & (xx < 30) & (xx >= 0)
    candidate = (block & ~tumour) | organ | neck | rod
    core = ndimage.binary_erosion(candidate, structure=geometry.ball_structure(6.0, sp))
    lab, _ = ndimage.label(core)
    liver_core = lab == lab[24, 24, 14]
    other_cores = (lab > 0) & ~liver_core
    assert other_cores[organ].any() and not core[rod].any() and not core[layer].any()
    reached = ndimage.binary_dilation(liver_core, iterations=4, mask=candidate)  # as extract_liver
    missed = layer & ~reached
    assert missed.sum() > 50 and not liver_module.fill_holes(reached)[tumour].all()  # the case to solve
    added = liver_module.thin_attached_parts(candidate, reached, liver_core, other_cores, sp)
    assert added[missed].all()
    assert not added[organ].any() and not added[rod & ~reached].any()
    assert liver_module.fill_holes(reached | added)[tumour].all()
    assert not liver_module.thin_attached_parts(candidate, reached, liver_core, other_cores, sp, min_contact=0.9).any()


def _organs_joined_at_a_neck(seed: int):
    """A 2 mm CT of an ellipsoidal liver (110 HU; radii 75, 60, 50 mm), a pancreas-like tube (100 HU, radius 12 mm)
    running from under the liver's lower face to a spleen-like ellipsoid (115 HU), all in 30 HU soft tissue with
    noise sd 8. Where the tube starts (x 140 mm) its top lies 6 mm above the liver's lower face: a neck that the 6 mm
    erosion keeps and an 8 mm one cuts (measured: all of tube and spleen in the mask without the cut, none with
    it). Returns (CT, liver truth, tube and spleen truth, landmarks inside the liver, LPS mm)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = (np.indices((90, 110, 150)) * 2.0).astype(np.float32)
    arr = np.full(zz.shape, -100.0, np.float32)
    arr[((yy - 110) / 105) ** 2 + ((xx - 150) / 145) ** 2 <= 1] = 30.0
    liver_truth = ((zz - 110) / 50) ** 2 + ((yy - 100) / 60) ** 2 + ((xx - 110) / 75) ** 2 <= 1
    tube = ((zz - 59) ** 2 + (yy - 110) ** 2 <= 12 ** 2) & (xx > 140) & (xx < 230)
    spleen = ((zz - 80) / 35) ** 2 + ((yy - 120) / 30) ** 2 + ((xx - 245) / 25) ** 2 <= 1
    arr[tube] = 100.0
    arr[spleen] = 115.0
    arr[liver_truth] = 110.0
    arr += rng.normal(0, 8, zz.shape).astype(np.float32)
    points = [(110, 100, 110), (90, 100, 125), (130, 100, 125), (110, 80, 115), (100, 110, 100), (120, 110, 100)]
    img, landmarks = _ct_and_landmarks(arr, (2.0, 2.0, 2.0), points)
    return img, liver_truth, (tube | spleen) & ~liver_truth, landmarks


def _ct_and_landmarks(arr: np.ndarray, spacing_xyz, points_lps):
    """A CT image of `arr` (z, y, x) with `spacing_xyz`, and the six vessel landmarks at `points_lps` (mm)."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    names = ("IVC", "RHV", "MHV", "LHV", "RPV", "LPV")
    return img, {k: np.array(p, float) for k, p in zip(names, points_lps, strict=True)}


@pytest.mark.parametrize("seed", [0, 1])
def test_an_organ_joined_to_the_liver_over_a_broad_neck_is_cut_off(seed):
    """The pancreas leak (33 of 97 full phantoms and ircadb1_1 had a false part of 57-389 ml in the mask; pancreas and
    spleen, or duodenum, on the cases looked at): the neck survives the 6 mm erosion, so without
    `separate_at_necks` the tube and the spleen join."""
    from LiverLocalizationLib import liver as liver_module

    ct, liver_truth, other, landmarks = _organs_joined_at_a_neck(seed)
    mask = sitk.GetArrayFromImage(liver_module.extract_liver(ct, landmarks)) > 0
    assert metrics.dice(mask, liver_truth) >= 0.99
    assert (mask & other).sum() < 0.01 * other.sum()
    leaked = sitk.GetArrayFromImage(liver_module.extract_liver(ct, landmarks, separation_mm=0.0)) > 0
    assert (leaked & other).sum() > 0.9 * other.sum()  # the case to solve


def _tumour_at_a_noisy_surface(seed: int):
    """A CT of 0.8 x 0.8 x 2.5 mm voxels (the working grid averages 3 x 3 of them) with noise sd 45 HU: an
    ellipsoidal liver (110 HU; radii 50, 55, 70 mm) in 30 HU soft tissue, and at its front a metastasis of 55 HU
    (radius 14 mm, 3 mm proud of the surface). Returns (CT, liver truth with the tumour, tumour, landmarks)."""
    rng = np.random.default_rng(seed)
    idx = np.indices((52, 190, 240)).astype(np.float32)
    zz, yy, xx = idx[0] * 2.5, idx[1] * 0.8, idx[2] * 0.8
    arr = np.full(zz.shape, -100.0, np.float32)
    arr[((yy - 76) / 74) ** 2 + ((xx - 96) / 94) ** 2 <= 1] = 30.0
    liver_truth = ((zz - 65) / 50) ** 2 + ((yy - 70) / 55) ** 2 + ((xx - 90) / 70) ** 2 <= 1
    tumour = (zz - 65) ** 2 + (yy - 114) ** 2 + (xx - 90) ** 2 <= 14 ** 2
    arr[liver_truth] = 110.0
    arr[tumour] = 55.0
    arr += rng.normal(0, 45, zz.shape).astype(np.float32)
    points = [(90, 70, 65), (70, 55, 60), (110, 55, 60), (80, 85, 70), (100, 85, 70), (90, 65, 55)]
    img, landmarks = _ct_and_landmarks(arr, (0.8, 0.8, 2.5), points)
    return img, liver_truth | tumour, tumour, landmarks


@pytest.mark.parametrize("seed", [0, 1])
def test_a_tumour_at_the_surface_of_a_noisy_ct_joins_the_liver(seed):
    """Phantom 409's 45 mm metastasis (about 55 HU) lay half outside the liver mask: on the raw CT's working grid
    noise put many of its voxels under the bite's 40 HU floor (`soft_tissue_in_concavities`). The bite now reads
    a 3-voxel median of the grid. Measured on seeds 0-2: 0.71 of the tumour inside the mask, 0.50-0.53 without
    the median."""
    from LiverLocalizationLib import liver as liver_module

    ct, liver_truth, tumour, landmarks = _tumour_at_a_noisy_surface(seed)
    mask = sitk.GetArrayFromImage(liver_module.extract_liver(ct, landmarks, raw=True)) > 0
    assert mask[tumour].mean() >= 0.65
    assert metrics.dice(mask, liver_truth) >= 0.99
    unsmoothed = sitk.GetArrayFromImage(liver_module.extract_liver(ct, landmarks, raw=True, concavity_median=1)) > 0
    assert unsmoothed[tumour].mean() <= 0.58  # the case to solve


def test_median_filtered_equals_scipy_median_filter_borders_included():
    """The liver extraction's 3-voxel medians (raw coarse CTs, the surface-tumour bite) moved from scipy to
    SimpleITK for speed; the masks must not change."""
    from scipy import ndimage

    from LiverLocalizationLib import liver as liver_module

    arr = np.random.default_rng(3).normal(100, 20, (9, 14, 11)).astype(np.float32)
    assert np.array_equal(liver_module.median_filtered(arr, 3), ndimage.median_filter(arr, size=3))
    inner = (slice(2, -2),) * 3
    assert np.array_equal(liver_module.median_filtered(arr, 5)[inner], ndimage.median_filter(arr, size=5)[inner])
