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
    """Phantom seed 13 (small) with four cysts or metastases (the kinds with a dark core), denoised and segmented."""
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(13, size="small", n_lesions=4, lesion_kinds=("cyst", "metastasis"))
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
    big = [row for row in ph.lesions if row["diameter_mm"] >= 15]
    assert big, "the test phantom should hold lesions of 15 mm or more"
    match = metrics.lesion_detection(res.lesion_labels, ph.truth_lesions, [row["id"] for row in big])
    missed = [f"{row['kind']} {row['diameter_mm']:.0f} mm" for row in big if row["id"] in match["missed"]]
    assert not missed, f"missed: {missed}"
    assert len(match["false_positives"]) <= 1


def test_phantom_lesion_extent(phantom_run):
    """Lesion voxels (all instances) against the truth."""
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
    assert [row["id"] for row in res.lesion_rows] == list(range(1, int(lesion.max()) + 1))
    assert all(row["source"] == "detected" and row["contrast_hu"] > 0 for row in res.lesion_rows)
    assert {"liver_s", "em_mrf_s", "lesions_s"} <= set(res.timings)
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


def test_a_weakly_enhanced_liver_is_told_from_muscle_and_bowel():
    """Phantom seed 11 (small): parenchyma 62 HU, muscle 50 HU, bowel 43 HU, noise 32 HU. The working grid is
    smoothed until the parenchyma stands out (`liver._separating_smoothing`): liver Dice 0.03 without it."""
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(11, size="small", n_lesions=0)
    assert ph.info["hu"]["liver"] < 70 and ph.info["hu"]["noise"] > 30
    mask = liver_extraction.extract_liver(io.validate_ct(ph.ct), ph.landmarks, raw=True)
    truth = np.isin(sitk.GetArrayViewFromImage(ph.truth_tissue), labels.TRUTH_LIVER)
    assert metrics.dice(mask, truth) >= 0.85
    assert metrics.dice(liver_extraction.extract_liver(io.validate_ct(ph.ct), ph.landmarks, raw=True,
                                                       max_smoothing_mm=0.0), truth) < 0.5


def test_equal_priors_give_the_liver_half_and_keep_each_groups_proportions():
    model = tissue_model.MixtureModel(means_hu=np.array([-100.0, 45.0, 77.0, 140.0]), sds_hu=np.array([10.0, 20.0, 15.0, 30.0]),
                                      weights=np.array([0.4, 0.35, 0.1, 0.15]), names=["other"] * 4, log_likelihood=0.0,
                                      n_iter=1)
    liver_class = np.array([False, False, True, False])
    even = liver_extraction.equal_prior_model(model, liver_class)
    assert even.weights[2] == pytest.approx(0.5)
    assert even.weights[[0, 1, 3]] == pytest.approx(0.5 * np.array([0.4, 0.35, 0.15]) / 0.9)
    # a border voxel half-way between liver (77) and muscle (45) is the muscle's with the region's shares, and
    # nearer the liver's with equal priors
    p_region = liver_extraction.liver_class_posterior(np.array([61.0]), model, liver_class)[0]
    p_even = liver_extraction.liver_class_posterior(np.array([61.0]), even, liver_class)[0]
    assert p_region < 0.5 < p_even
    assert model.weights[2] == 0.1  # the fitted model is not modified


def test_a_noisy_weakly_enhanced_livers_border_is_not_pulled_inside():
    """Phantom seed 5002 (full size): parenchyma 77 HU against muscle of 47 HU, noise 28 HU. With the region's class
    shares as priors the border voxels go to the muscle and fat beside the liver, and the extracted liver lies
    4 mm inside its surface (Dice 0.845, its two surface tumours outside); within 4 mm of that border, equal priors
    move it out (Dice 0.92, `border_reach_mm`)."""
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(5002, size="full")
    assert ph.info["hu"]["liver"] < 80 and ph.info["hu"]["noise"] > 25
    ct = io.validate_ct(ph.ct)
    truth = np.isin(sitk.GetArrayViewFromImage(ph.truth_tissue), labels.TRUTH_LIVER)
    tumours = sitk.GetArrayViewFromImage(ph.truth_lesions) > 0
    mask = sitk.GetArrayFromImage(liver_extraction.extract_liver(ct, ph.landmarks, raw=True)) > 0
    assert metrics.dice(mask, truth) >= 0.9
    assert mask[tumours].mean() >= 0.4
    inside = sitk.GetArrayFromImage(liver_extraction.extract_liver(ct, ph.landmarks, raw=True, border_reach_mm=0.0)) > 0
    assert metrics.dice(inside, truth) < 0.87 and inside[tumours].mean() < 0.1


def test_where_the_median_leaves_no_liver_the_unfiltered_grid_is_tried(monkeypatch):
    """Phantom seed 10 (small, 2 x 2 x 2.5 mm): parenchyma 64 HU beside muscle of 45 HU, noise 30 HU, so the working
    grid (22 HU of noise) is median-filtered; filtered and smoothed, nothing liver-like survives the erosion. The
    unfiltered grid is then tried, and the liver is found instead of the run stopping."""
    from LiverLocalizationLib.phantom import generate_phantom

    ph = generate_phantom(10, size="small")
    assert ph.info["hu"]["liver"] < 70 and ph.info["hu"]["noise"] > 25
    calls = []
    median = liver_extraction.median_filtered
    monkeypatch.setattr(liver_extraction, "median_filtered", lambda a, size: calls.append(size) or median(a, size))
    mask = liver_extraction.extract_liver(io.validate_ct(ph.ct), ph.landmarks, raw=True)
    truth = np.isin(sitk.GetArrayViewFromImage(ph.truth_tissue), labels.TRUTH_LIVER)
    assert calls  # the filtered grid was tried first
    assert metrics.dice(mask, truth) >= 0.9


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


def _ball(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


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
    filled = geometry.fill_holes(parenchyma)
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
    assert max(r - b for r, b in geometry.zip_equal(roi_size, box_size)) >= 4  # a real crop, not the whole region


def test_fill_holes_equals_scipy_in_3d_then_per_slice():
    """The labelling version gives exactly scipy's binary_fill_holes on the volume, then on every axial slice."""

    def reference(mask):
        out = ndimage.binary_fill_holes(mask)
        for z in range(out.shape[0]):
            out[z] = ndimage.binary_fill_holes(out[z])
        return out

    rng = np.random.default_rng(0)
    for _ in range(25):
        shape = tuple(int(v) for v in rng.integers(3, 30, 3))
        mask = ndimage.binary_opening(rng.random(shape) < rng.uniform(0.3, 0.8)) | (rng.random(shape) < 0.3)
        np.testing.assert_array_equal(geometry.fill_holes(mask), reference(mask))
    shell = np.zeros((9, 12, 12), bool)
    shell[1:8, 2:10, 2:10] = True
    shell[2:7, 4:8, 4:8] = False  # a closed cavity: filled in 3-D
    shell[4, 0:6, 5] = False  # a channel to the side in one slice: that slice's part of the cavity stays open
    filled = geometry.fill_holes(shell)
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
    accepted, rejected = liver_module.dark_regions(arr, parenchyma, geometry.fill_holes(parenchyma), 105.0, 8.0, sp)
    assert accepted[cyst].mean() > 0.95 and not rejected[cyst].any()
    arr, parenchyma, gallbladder = _thin_lobe(72.0, 15.0)
    accepted, rejected = liver_module.dark_regions(arr, parenchyma, geometry.fill_holes(parenchyma), 105.0, 8.0, sp)
    assert not accepted[gallbladder].any()


def test_embedded_in_parenchyma_tells_a_cyst_in_a_lobe_from_fluid_on_its_face():
    sp = (2.5, 2.5, 2.5)
    _, parenchyma, cyst = _thin_lobe(50.0, 20.0)
    assert liver_extraction.embedded_in_parenchyma(cyst, parenchyma, sp)
    _, parenchyma, gallbladder = _thin_lobe(72.0, 15.0)
    assert not liver_extraction.embedded_in_parenchyma(gallbladder, parenchyma, sp)
    # contact alone is not enough: parenchyma must lie round the blob in enough directions
    _, parenchyma, cyst = _thin_lobe(50.0, 20.0)
    assert not liver_extraction.embedded_in_parenchyma(cyst, parenchyma, sp, min_closure=0.9)


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
    assert missed.sum() > 50 and not geometry.fill_holes(reached)[tumour].all()  # the case to solve
    added = liver_module.thin_attached_parts(candidate, reached, liver_core, other_cores, sp)
    assert added[missed].all()
    assert not added[organ].any() and not added[rod & ~reached].any()
    assert geometry.fill_holes(reached | added)[tumour].all()
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
    return img, {k: np.array(p, float) for k, p in geometry.zip_equal(names, points_lps)}


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


def _sheet_beside_the_liver(seed: int):
    """A CT of 1.4 x 1.4 x 2.5 mm voxels, noise sd 20 HU: an ellipsoidal liver (110 HU; radii 50, 55, 70 mm) in 30 HU
    soft tissue, and leaving its left face a sheet 4 mm thick of 105 HU running 45 mm on (a stomach's enhancing wall).
    Returns (CT, liver truth, sheet, landmarks)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = (np.indices((60, 110, 150)).astype(np.float32) * np.array([2.5, 1.4, 1.4], np.float32)[:, None, None, None])
    arr = np.full(zz.shape, -100.0, np.float32)
    arr[((yy - 77) / 74) ** 2 + ((xx - 105) / 100) ** 2 <= 1] = 30.0
    liver_truth = ((zz - 75) / 50) ** 2 + ((yy - 70) / 55) ** 2 + ((xx - 90) / 70) ** 2 <= 1
    sheet = (np.abs(yy - 70) <= 2.0) & (xx > 140) & (xx < 205) & (np.abs(zz - 75) < 30) & ~liver_truth
    arr[sheet] = 105.0
    arr[liver_truth] = 110.0
    arr += rng.normal(0, 20, zz.shape).astype(np.float32)
    points = [(90, 70, 75), (70, 55, 70), (110, 55, 70), (80, 85, 80), (100, 85, 80), (90, 65, 65)]
    img, landmarks = _ct_and_landmarks(arr, (1.4, 1.4, 2.5), points)
    return img, liver_truth, sheet, landmarks


@pytest.mark.parametrize("seed", [0, 1])
def test_the_borders_growth_does_not_run_along_a_sheet_of_the_livers_intensity(seed, monkeypatch):
    """The growth of the border with equal priors (`border_reach_mm`) keeps only what holds, with the liver, a ball
    of its radius: along a 4 mm sheet of nearly the liver's intensity it would otherwise take 4 mm more of the sheet
    (0.17 of it in the mask against 0.11; on ircadb1_1 the stomach's wall beside segment II)."""
    from LiverLocalizationLib import liver as liver_module

    ct, liver_truth, sheet, landmarks = _sheet_beside_the_liver(seed)
    mask = sitk.GetArrayFromImage(liver_module.extract_liver(ct, landmarks, raw=True)) > 0
    without = sitk.GetArrayFromImage(liver_module.extract_liver(ct, landmarks, raw=True, border_reach_mm=0.0)) > 0
    assert metrics.dice(mask, liver_truth) >= 0.99
    assert mask[sheet].mean() <= without[sheet].mean() + 0.01
    monkeypatch.setattr(liver_module.geometry, "open_mm", lambda m, radius_mm, spacing_zyx: m)
    along = sitk.GetArrayFromImage(liver_module.extract_liver(ct, landmarks, raw=True)) > 0
    assert along[sheet].mean() > mask[sheet].mean() + 0.03  # the case to solve


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
    noise put many of its voxels under the bite's 40 HU floor (`soft_tissue_in_concavities`). The bite reads a
    3-voxel median of the grid. Measured on seeds 0-2: 0.76 of the tumour inside the mask, 0.53-0.59 without the
    median (0.71 and 0.50-0.53 with the bite's former 25 mm radius). The comparison without the median leaves out the
    border's growth with equal priors (`border_reach_mm`), which takes in part of the tumour by itself (0.57 and 0.65)."""
    from LiverLocalizationLib import liver as liver_module

    ct, liver_truth, tumour, landmarks = _tumour_at_a_noisy_surface(seed)
    mask = sitk.GetArrayFromImage(liver_module.extract_liver(ct, landmarks, raw=True)) > 0
    assert mask[tumour].mean() >= 0.72
    assert metrics.dice(mask, liver_truth) >= 0.99
    unsmoothed = sitk.GetArrayFromImage(liver_module.extract_liver(ct, landmarks, raw=True, concavity_median=1,
                                                                         border_reach_mm=0.0)) > 0
    assert unsmoothed[tumour].mean() <= 0.65  # the case to solve


def test_median_filtered_equals_scipy_median_filter_borders_included():
    """The liver extraction's 3-voxel medians (raw coarse CTs, the surface-tumour bite) moved from scipy to
    SimpleITK for speed; the masks must not change."""
    from scipy import ndimage

    from LiverLocalizationLib import liver as liver_module

    arr = np.random.default_rng(3).normal(100, 20, (9, 14, 11)).astype(np.float32)
    assert np.array_equal(liver_module.median_filtered(arr, 3), ndimage.median_filter(arr, size=3))
    inner = (slice(2, -2),) * 3
    assert np.array_equal(liver_module.median_filtered(arr, 5)[inner], ndimage.median_filter(arr, size=5)[inner])


def _fat_beside_air(shape, air_from_x: int):
    """Index grids (z, y, x) and a float32 volume of fat (-100 HU) with air (-1000 HU) from x = `air_from_x` on:
    a body for synthetic organs (the air makes it read as CT)."""
    zz, yy, xx = np.indices(shape)
    values = np.full(shape, -100.0, np.float32)
    values[:, :, air_from_x:] = -1000.0
    return zz, yy, xx, values


def test_lesions_stay_numbered_by_decreasing_volume_after_one_is_continued_beyond_the_liver():
    """Lesion 1 is the largest, as the report and the segmentation promise: a tumour at the surface, cut by the
    extracted liver to a tenth of its volume, is found smaller than a tumour inside the liver, then continued beyond
    the border to its whole volume; the numbering follows (it came before the continuation, leaving it second)."""
    zz, yy, xx, values = _fat_beside_air((50, 90, 90), 85)
    liver_true = (xx >= 5) & (xx < 60) & (yy >= 5) & (yy < 85) & (zz >= 3) & (zz < 47)
    values[liver_true] = 110.0
    inner = (zz - 25) ** 2 + (yy - 45) ** 2 + (xx - 22) ** 2 <= 10 ** 2
    surface = (zz - 25) ** 2 + (yy - 45) ** 2 + (xx - 58) ** 2 <= 14 ** 2
    values[inner | surface] = 50.0
    values += np.random.default_rng(0).normal(0, 10, values.shape).astype(np.float32)
    extracted = liver_true & ~(surface & (xx >= 50))
    res = tissue_model.segment_tissues(sitk.GetImageFromArray(values), None,
                                       sitk.GetImageFromArray(extracted.astype(np.uint8)), liver_extracted=True)
    lesion = sitk.GetArrayFromImage(res.lesion_labels)
    sizes = [int((lesion == i).sum()) for i in range(1, int(lesion.max()) + 1)]
    assert sizes == sorted(sizes, reverse=True)
    assert (lesion[surface] == 1).mean() > 0.9 and (lesion[inner] == 2).mean() > 0.9
    assert [row["id"] for row in res.lesion_rows] == list(range(1, len(sizes) + 1))


def test_what_a_tumour_continued_beyond_the_liver_encloses_joins_the_liver():
    """A tumour bulging from the extracted liver's flat surface, with a brighter nodule (95 HU, between the
    tumour's 55 and the parenchyma's 110: no voxel of the tumour's own intensities) inside its bulge: the bulge
    is continued beyond the liver and the nodule it encloses is the liver's too (the mask is hole-filled again
    after the lesions join it)."""
    zz, yy, xx, values = _fat_beside_air((50, 90, 100), 92)
    extracted = (xx >= 8) & (xx < 60) & (yy >= 8) & (yy < 82) & (zz >= 4) & (zz < 46)
    values[extracted] = 110.0
    tumour = (zz - 25) ** 2 + (yy - 45) ** 2 + (xx - 56) ** 2 <= 16 ** 2
    values[tumour] = 55.0
    nodule = (zz - 25) ** 2 + (yy - 45) ** 2 + (xx - 64) ** 2 <= 4 ** 2
    values[nodule] = 95.0
    values += np.random.default_rng(2).normal(0, 6, values.shape).astype(np.float32)
    res = tissue_model.segment_tissues(sitk.GetImageFromArray(values), None,
                                       sitk.GetImageFromArray(extracted.astype(np.uint8)), liver_extracted=True)
    liver_out = sitk.GetArrayFromImage(res.liver_mask) > 0
    lesion = sitk.GetArrayFromImage(res.lesion_labels) > 0
    assert (lesion[tumour & ~extracted & ~nodule]).mean() > 0.9
    assert liver_out[nodule].all()
    assert not liver_out[~(extracted | tumour)].any()


def test_a_hypodense_band_along_the_border_is_not_continued_into_the_tissue_beyond_it():
    """A curved hypodense band inside the liver along its border (the hilum's fat and vessels at a fissure, taken
    for a lesion), with a thin layer of tissue of the band's intensity beyond the border and fat past it: the ball
    fitted to the band's interface with the parenchyma reaches far beyond the border, where it is mostly fat, so it
    is no bulging tumour's ball and nothing beyond the border joins the band. A tumour that bulges fills its ball
    there (the surface tumours of the tests above are still continued)."""
    shape = (50, 80, 90)
    zz, yy, xx = np.indices(shape)
    values = np.full(shape, -100.0, np.float32)  # fat
    liver = (xx >= 5) & (xx < 60) & (yy >= 5) & (yy < 75) & (zz >= 3) & (zz < 47)
    values[liver] = 110.0
    layer = (xx >= 60) & (xx < 63) & (yy >= 5) & (yy < 75) & (zz >= 3) & (zz < 47)  # 3 mm of soft tissue beyond
    values[layer] = 55.0
    r = np.sqrt((zz - 25) ** 2 + (yy - 40) ** 2 + (xx - 60) ** 2)
    band = liver & (r <= 18) & (r > 15)  # 3 mm thick, curving round a point on the border
    values[band] = 55.0
    values += np.random.default_rng(0).normal(0, 6, values.shape).astype(np.float32)
    grown = lesions.extend_beyond_liver(values, liver, band.astype(np.uint16), (1.0, 1.0, 1.0))
    assert not (grown[~liver] > 0).any()  # without the test of the ball's content: about 3000 voxels of the layer
    assert (grown[band] == 1).all()


def test_a_tumour_pressed_against_the_wall_is_continued_though_its_ball_overshoots_into_the_muscle():
    """A tumour (95 HU) bulging 3 mm beyond the extracted liver (130 HU) where it meets the abdominal wall's muscle
    (45 HU, darker than the tumour, not fat): the ball fitted to its interface with the parenchyma overshoots the
    flattened bulge into the muscle, so less than half of its part beyond the border is the tumour's tissue, the
    rest soft tissue the tumour pushes against. That is a tumour's ball (unlike the hilum's, whose rest is fat and
    vessels): the bulge joins the lesion and the muscle does not."""
    shape = (50, 80, 90)
    zz, yy, xx = np.indices(shape)
    values = np.full(shape, -100.0, np.float32)  # fat
    liver = (xx >= 5) & (xx < 60) & (yy >= 5) & (yy < 75) & (zz >= 3) & (zz < 47)
    values[liver] = 130.0
    muscle = (xx >= 63) & (xx < 80) & (yy >= 2) & (yy < 78) & (zz >= 1) & (zz < 49)
    values[muscle] = 45.0
    tumour = ((zz - 25) ** 2 + (yy - 40) ** 2 + (xx - 56) ** 2 <= 16 ** 2) & (xx < 63)
    values[tumour] = 95.0
    values += np.random.default_rng(0).normal(0, 6, values.shape).astype(np.float32)
    grown = lesions.extend_beyond_liver(values, liver, (tumour & liver).astype(np.uint16), (1.0, 1.0, 1.0))
    bulge = tumour & ~liver
    assert (grown[bulge] == 1).mean() > 0.9
    assert not (grown[muscle] > 0).any()


@pytest.mark.parametrize("noise_sd", [5.0, 20.0, 35.0])
def test_working_noise_is_the_noise_of_the_soft_tissue_not_its_structure(noise_sd):
    """`liver.working_noise_hu` reads the noise from neighbouring voxels' differences in soft tissue: organs of
    different levels and a smooth gradient do not count, air and bone are left out."""
    rng = np.random.default_rng(int(noise_sd))
    zz, yy, xx = np.indices((30, 60, 60))
    arr = np.where(xx < 30, 110.0, 55.0) + 0.5 * yy  # two organs and a gradient
    arr[:, :, 50:] = -1000.0  # air
    arr = (arr + rng.normal(0, noise_sd, arr.shape)).astype(np.float32)
    assert liver_extraction.working_noise_hu(arr) == pytest.approx(noise_sd, rel=0.1)
