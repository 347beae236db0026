"""The synthetic liver CT phantom: determinism, HU per tissue, anatomy, Couinaud truth, landmarks, lesions, I/O."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LiverLocalizationLib import geometry, io, labels
from LiverLocalizationLib.errors import InputError
from LiverLocalizationLib.phantom import REFERENCE_COUINAUD_FRACTIONS, generate_phantom, write_phantom

LANDMARK_LABEL = {"IVC": labels.TRUTH_IVC, "IVC_inferior": labels.TRUTH_IVC, "RHV": labels.TRUTH_HEPATIC_VEIN,
                  "MHV": labels.TRUTH_HEPATIC_VEIN, "LHV": labels.TRUTH_HEPATIC_VEIN, "RPV": labels.TRUTH_PORTAL_VEIN,
                  "LPV": labels.TRUTH_PORTAL_VEIN, "UP": labels.TRUTH_PORTAL_VEIN}
_cache: dict = {}


def phantom(seed=0, **kw):
    key = (seed, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items())))
    if key not in _cache:
        _cache[key] = generate_phantom(seed=seed, size="small", **kw)
    return _cache[key]


def arr(img):
    return sitk.GetArrayFromImage(img)


def label_near(ph, point_lps, radius=1):
    """Truth tissue labels in the (2 radius + 1)^3 voxel block around the voxel nearest to a point."""
    idx = np.rint(geometry.lps_to_index(ph.truth_tissue, point_lps)).astype(int)
    t = arr(ph.truth_tissue)
    lo = np.maximum(idx[::-1] - radius, 0)
    hi = np.minimum(idx[::-1] + radius + 1, t.shape)
    return t[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], t[idx[2], idx[1], idx[0]]


# ----------------------------------------------------------------------------- determinism and API

def test_same_seed_gives_bitwise_identical_case():
    a = phantom(3)
    b = generate_phantom(seed=3, size="small")
    for name in ("ct", "ct_clean", "truth_tissue", "truth_couinaud", "truth_lesions"):
        np.testing.assert_array_equal(arr(getattr(a, name)), arr(getattr(b, name)), err_msg=name)
        assert geometry.same_geometry(getattr(a, name), getattr(b, name), 0.0)
    assert a.lesions == b.lesions
    for k in a.landmarks:
        np.testing.assert_array_equal(a.landmarks[k], b.landmarks[k])


def test_different_seeds_differ():
    a, b = phantom(0), phantom(1)
    assert a.ct.GetSize() != b.ct.GetSize() or not np.array_equal(arr(a.ct), arr(b.ct))
    assert abs(a.liver_volume_ml - b.liver_volume_ml) > 1.0
    assert np.linalg.norm(a.landmarks["RHV"] - b.landmarks["RHV"]) > 1.0


def test_outputs_share_geometry_and_types():
    ph = phantom(0)
    assert ph.ct.GetPixelID() == sitk.sitkInt16
    assert ph.ct_clean.GetPixelID() == sitk.sitkFloat32
    assert ph.truth_tissue.GetPixelID() == sitk.sitkUInt8
    assert ph.truth_couinaud.GetPixelID() == sitk.sitkUInt8
    assert ph.truth_lesions.GetPixelID() == sitk.sitkUInt16
    for img in (ph.ct_clean, ph.truth_tissue, ph.truth_couinaud, ph.truth_lesions):
        assert geometry.same_geometry(img, ph.ct, 0.0)
    assert ph.ct.GetSpacing() == (2.0, 2.0, 2.5)
    assert set(ph.landmarks) == set(labels.LANDMARK_NAMES)
    assert ph.seed == 0 and ph.size == "small"
    assert set(np.unique(arr(ph.truth_tissue))) <= {0, 1, 2, 3, 4, 5}
    assert set(np.unique(arr(ph.truth_couinaud))) == set(range(9))


def test_bad_arguments_raise_input_error():
    with pytest.raises(InputError, match="size"):
        generate_phantom(size="huge")
    with pytest.raises(InputError, match="lesion_kinds"):
        generate_phantom(lesion_kinds=["adenoma"])
    with pytest.raises(InputError, match="n_lesions"):
        generate_phantom(n_lesions=-1)


def test_progress_is_reported_in_order():
    calls = []
    generate_phantom(seed=5, size="small", n_lesions=0, progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions) and len(calls) >= 4


# ----------------------------------------------------------------------------- intensities

def core(mask, iterations=1):
    return ndimage.binary_erosion(mask, iterations=iterations)


def test_tissue_hounsfield_units_are_portal_venous():
    ph = phantom(0)
    ct, clean, t = arr(ph.ct).astype(float), arr(ph.ct_clean), arr(ph.truth_tissue)
    par = core(t == labels.TRUTH_PARENCHYMA, 2)
    assert 95 <= ct[par].mean() <= 115
    noise = (ct - clean)[par]
    assert 15 <= noise.std() <= 25
    assert clean[par].std() < 8  # texture small, noise supplies the spread
    for lab in (labels.TRUTH_IVC, labels.TRUTH_PORTAL_VEIN):
        c = core(t == lab, 1 if lab == labels.TRUTH_PORTAL_VEIN else 2)
        assert c.sum() > 20, lab
        assert 135 <= clean[c].mean() <= 165, (lab, clean[c].mean())
    hv = t == labels.TRUTH_HEPATIC_VEIN
    assert 120 <= clean[hv].max() and 130 <= np.percentile(clean[hv], 90) <= 165
    # air outside the body, bone present, fat present
    assert ct[:, :3, :3].mean() < -950
    assert (clean > 300).sum() * np.prod(ph.ct.GetSpacing()) / 1000 > 30  # > 30 ml of bone
    assert ((clean > -130) & (clean < -70)).mean() > 0.05


@pytest.mark.parametrize("kind", labels.LESION_KINDS)
def test_lesion_kinds_have_their_enhancement_pattern(kind):
    ph = phantom(11, n_lesions=4, lesion_kinds=[kind])
    assert len(ph.lesions) >= 3 and all(row["kind"] == kind for row in ph.lesions)
    clean, les = arr(ph.ct_clean), arr(ph.truth_lesions)
    liver_hu = np.median(clean[core(arr(ph.truth_tissue) == labels.TRUTH_PARENCHYMA, 2)])
    for row in ph.lesions:
        m = les == row["id"]
        inner = core(m, 1) if core(m, 1).sum() >= 8 else m
        if kind == "cyst":
            assert clean[inner].mean() <= 20 + 0.25 * (liver_hu - 10) * (inner.sum() < 30)
        elif kind == "metastasis":  # hypodense by 12-60 HU, with necrosis near water at most
            assert 0 <= clean[inner].mean() <= liver_hu - 8
        elif kind == "hcc":  # washout: a little darker than the parenchyma, inside an enhancing capsule
            deep = core(m, 2) if core(m, 2).sum() >= 8 else inner
            assert liver_hu - 45 <= np.median(clean[deep]) <= liver_hu  # the median: lipiodol deposits may lie inside
        else:  # haemangioma: nodules near blood pool in the periphery, a darker centre
            rim = m & ~core(m, 1)
            assert np.percentile(clean[m], 95) >= liver_hu + 10
            if core(m, 2).sum() >= 8:
                assert clean[core(m, 2)].mean() < clean[rim].max()
        assert row["malignant"] == (kind in labels.MALIGNANT_KINDS)


# ----------------------------------------------------------------------------- anatomy and Couinaud truth

@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_liver_volume_and_couinaud_fractions_near_reference(seed):
    ph = phantom(seed) if seed in (0, 1) else phantom(seed, n_lesions=0)
    cou = arr(ph.truth_couinaud)
    vox = geometry.voxel_volume_ml(ph.ct)
    assert 1200 <= ph.liver_volume_ml <= 2200
    assert ph.liver_volume_ml == pytest.approx(np.count_nonzero(cou) * vox, rel=1e-6)
    counts = np.bincount(cou.ravel(), minlength=9)[1:9]
    fractions = counts / counts.sum()
    for k, ref in REFERENCE_COUINAUD_FRACTIONS.items():
        assert 0.5 * ref <= fractions[k - 1] <= 1.5 * ref, (k, fractions[k - 1], ref)


def test_couinaud_covers_liver_lesions_and_intrahepatic_vessels_only():
    ph = phantom(0)
    t, cou = arr(ph.truth_tissue), arr(ph.truth_couinaud)
    assert np.all(cou[(t == labels.TRUTH_PARENCHYMA) | (t == labels.TRUTH_LESION)] > 0)
    assert np.all(cou[t == labels.TRUTH_IVC] == 0)
    assert np.all(t[cou > 0] != 0)
    hv_in_liver = (cou[t == labels.TRUTH_HEPATIC_VEIN] > 0).mean()
    assert hv_in_liver > 0.6


def segment_centroids(ph):
    cou = arr(ph.truth_couinaud)
    out = {}
    for k in range(1, 9):
        zyx = np.argwhere(cou == k)
        out[k] = geometry.voxel_centers_lps(ph.truth_couinaud, zyx).mean(axis=0)
    return out


def test_anatomy_is_where_it_belongs_in_lps():
    ph = phantom(1)
    c = segment_centroids(ph)
    body = geometry.voxel_centers_lps(ph.ct, np.argwhere(arr(ph.ct) > -300)[::50]).mean(axis=0)
    liver = geometry.voxel_centers_lps(ph.ct, np.argwhere(arr(ph.truth_couinaud) > 0)).mean(axis=0)
    assert liver[0] < body[0] - 20  # liver on the patient's right (smaller x in LPS)
    assert liver[1] < ph.landmarks["IVC"][1]  # IVC posterior to the liver's centre
    # right posterior < right anterior < IV < left lateral, from the patient's right to left
    assert c[7][0] < c[4][0] < c[2][0] and c[6][0] < c[4][0] < c[3][0]
    # superior segments above their inferior partners (z up)
    assert c[7][2] > c[6][2] and c[8][2] > c[5][2] and c[2][2] > c[3][2]
    # right anterior in front of right posterior (y posterior)
    assert c[8][1] < c[7][1] and c[5][1] < c[6][1]
    # caudate next to the IVC
    assert np.linalg.norm(c[1][:2] - ph.landmarks["IVC"][:2]) < 45


def test_hepatic_veins_run_on_segment_borders():
    ph = phantom(0)
    t, cou = arr(ph.truth_tissue), arr(ph.truth_couinaud)
    border_pairs = {"RHV": ({6, 7}, {5, 8}), "MHV": ({5, 8}, {4}), "LHV": ({4}, {2, 3})}
    for vein, (side_a, side_b) in border_pairs.items():
        idx = np.rint(geometry.lps_to_index(ph.ct, ph.landmarks[vein])).astype(int)[::-1]
        block = cou[idx[0] - 4:idx[0] + 5, idx[1] - 4:idx[1] + 5, idx[2] - 4:idx[2] + 5]
        present = set(np.unique(block)) - {0}
        assert present & side_a and present & side_b, (vein, present)
        assert t[tuple(idx)] == labels.TRUTH_HEPATIC_VEIN


def border_points(ph, side_a, side_b):
    """LPS centres of voxels of side_a that touch side_b along x, y or z (a Couinaud border surface)."""
    cou = arr(ph.truth_couinaud)
    a, b = np.isin(cou, list(side_a)), np.isin(cou, list(side_b))
    touch = np.zeros_like(a)
    for axis in range(3):
        for shift in (1, -1):
            touch |= a & np.roll(b, shift, axis=axis)
    return geometry.voxel_centers_lps(ph.truth_couinaud, np.argwhere(touch))


@pytest.mark.parametrize("seed", [0, 1])
def test_sectoral_borders_are_curved_not_planes(seed):
    ph = phantom(seed)
    for side_a, side_b in (({6, 7}, {5, 8}), ({5, 8}, {4})):
        pts = border_points(ph, side_a, side_b)
        assert len(pts) > 200
        centred = pts - pts.mean(axis=0)
        normal = np.linalg.svd(centred, full_matrices=False)[2][-1]
        residual = np.abs(centred @ normal)
        rms = float(np.sqrt(np.mean(residual**2)))
        # a voxelised plane gives ~0.5 mm; the phantom's ruled, twisted borders 2-3.5 mm; still one sheet
        assert 1.5 < rms < 25.0, (side_a, side_b, rms)


def test_vessel_trees_are_each_one_connected_component():
    for seed in (0, 1):
        t = arr(phantom(seed).truth_tissue)
        _, n_hv = ndimage.label((t == labels.TRUTH_HEPATIC_VEIN) | (t == labels.TRUTH_IVC))
        _, n_pv = ndimage.label(t == labels.TRUTH_PORTAL_VEIN)
        assert n_hv == 1 and n_pv == 1, (seed, n_hv, n_pv)
        vox = np.prod(phantom(seed).ct.GetSpacing()) / 1000
        assert (t == labels.TRUTH_HEPATIC_VEIN).sum() * vox > 3  # veins with real length, not stubs
        assert (t == labels.TRUTH_PORTAL_VEIN).sum() * vox > 5


@pytest.mark.parametrize("variant", [{}, {"oblique": True}, {"flip": True}])
def test_landmarks_lie_inside_their_vessels(variant):
    ph = phantom(0, **variant)
    for name, p in ph.landmarks.items():
        block, centre = label_near(ph, p, 1)
        assert LANDMARK_LABEL[name] in block, (name, centre)
    lm = ph.landmarks
    for vein in labels.HEPATIC_VEIN_LANDMARKS:
        d = np.linalg.norm(lm[vein][:2] - lm["IVC"][:2])
        assert 20 <= d <= 45, (vein, d)
    assert lm["IVC_inferior"][2] < lm["IVC"][2] - 30
    assert lm["RPV"][0] < lm["LPV"][0]  # right portal vein on the patient's right
    assert lm["UP"][1] < lm["LPV"][1]  # umbilical portion runs anteriorly


# ----------------------------------------------------------------------------- lesions

def test_lesions_inside_liver_and_table_consistent_with_label_maps():
    ph = phantom(4, n_lesions=6)
    les, cou, t = arr(ph.truth_lesions), arr(ph.truth_couinaud), arr(ph.truth_tissue)
    assert len(ph.lesions) == 6
    assert np.all(cou[les > 0] > 0)
    np.testing.assert_array_equal(les > 0, t == labels.TRUTH_LESION)
    vox = geometry.voxel_volume_ml(ph.ct)
    assert [r["id"] for r in ph.lesions] == list(range(1, 7))
    for row in ph.lesions:
        m = les == row["id"]
        assert row["volume_ml"] == pytest.approx(m.sum() * vox, rel=0.01)
        assert 4 <= row["diameter_mm"] <= 62
        assert sum(row["couinaud_fractions"].values()) == pytest.approx(1.0, abs=1e-3)
        segs = np.bincount(cou[m], minlength=9)[1:]
        assert row["main_segment"] == labels.COUINAUD_ROMAN[int(np.argmax(segs)) + 1]
        centre_lps = geometry.lps_to_ras(np.asarray(row["centroid_ras"]))
        idx = np.rint(geometry.lps_to_index(ph.ct, centre_lps)).astype(int)[::-1]
        assert np.linalg.norm(geometry.voxel_centers_lps(ph.ct, np.argwhere(m)).mean(axis=0) - centre_lps) < 0.01
        assert cou[tuple(idx)] > 0


def test_scans_vary_in_enhancement_and_noise_as_real_ones_do():
    """A quarter of the scans have a 60-80 HU parenchyma with 25-35 HU noise; the others 95-125 HU (factor
    0.8-1.25); the blood pool enhances in every scan."""
    from LiverLocalizationLib.phantom import _hu_params

    draws = [_hu_params(np.random.default_rng(s)) for s in range(400)]
    weak = [d for d in draws if d["liver"] < 85]
    assert 0.15 < len(weak) / len(draws) < 0.35
    assert all(60 <= d["liver"] <= 80 and 25 <= d["noise"] <= 35 for d in weak)
    assert all(90 <= d["liver"] <= 130 for d in draws if d["liver"] >= 85)
    assert all(d["portal"] > d["liver"] + 10 for d in draws)


def test_lesions_are_as_varied_as_real_ones():
    """Over a few seeds: a lesion bulges out of the liver (its voxels beyond the parenchyma keep a Couinaud label),
    metastases touch each other, and a mass holds deposits as bright as calcium or lipiodol."""
    from LiverLocalizationLib.phantom import _lesion_spec

    spec = _lesion_spec("hcc", np.zeros(3), np.full(3, 20.0), np.random.default_rng(1))
    specs = [_lesion_spec("metastasis", np.zeros(3), np.full(3, 15.0), np.random.default_rng(s)) for s in range(40)]
    assert any("deposits" in s for s in specs + [spec]) and any(s.get("septa") for s in specs)
    bulging = touching = False
    for seed in (1002, 1003, 1011):
        ph = phantom(seed, n_lesions=8)
        les, cou, tissue = arr(ph.truth_lesions), arr(ph.truth_couinaud), arr(ph.truth_tissue)
        assert np.all(cou[les > 0] > 0)
        for i in range(1, int(les.max()) + 1):
            grown = ndimage.binary_dilation(les == i)
            touching |= bool(np.any((les[grown] > 0) & (les[grown] != i)))
        envelope = ndimage.binary_closing(np.isin(tissue, (labels.TRUTH_PARENCHYMA,)), iterations=2)
        bulging |= bool(np.any((les > 0) & ~ndimage.binary_fill_holes(envelope)))
    assert touching and bulging


def test_many_lesions_of_balanced_kinds_fit():
    ph = phantom(21, n_lesions=8, lesion_kinds=list(labels.LESION_KINDS))
    assert len(ph.lesions) == 8
    assert len(np.unique(arr(ph.truth_lesions))) == 9
    assert {r["kind"] for r in ph.lesions} <= set(labels.LESION_KINDS)


def test_default_lesion_count_by_seed():
    counts = [len(phantom(s).lesions) for s in (0, 1, 3)]
    assert all(0 <= n <= 6 for n in counts)
    assert sum(n >= 2 for n in counts) >= 2
    assert len(phantom(0, n_lesions=0).lesions) == 0
    assert arr(phantom(0, n_lesions=0).truth_lesions).max() == 0


# ----------------------------------------------------------------------------- storage variants

@pytest.mark.parametrize("variant", [{"oblique": True}, {"flip": True}, {"oblique": True, "flip": True}])
def test_oblique_and_flipped_storage_keep_the_same_physical_anatomy(variant):
    plain, other = phantom(0), phantom(0, **variant)
    d = geometry.direction_matrix(other.ct)
    np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-9)
    if variant.get("flip") and not variant.get("oblique"):
        np.testing.assert_allclose(d, np.diag([-1.0, -1.0, 1.0]))
    if variant.get("oblique"):
        assert np.abs(d - np.diag(np.diag(d))).max() > 0.1
    assert other.liver_volume_ml == pytest.approx(plain.liver_volume_ml, rel=0.03)
    for k in plain.landmarks:
        np.testing.assert_allclose(other.landmarks[k], plain.landmarks[k], atol=1e-6)
    # Couinaud labels agree at the same physical points
    cou_p, cou_o = arr(plain.truth_couinaud), arr(other.truth_couinaud)
    zyx = np.argwhere(cou_p > 0)[::97]
    pts = geometry.voxel_centers_lps(plain.truth_couinaud, zyx)
    idx = np.rint(geometry.lps_to_index(other.truth_couinaud, pts)).astype(int)[:, ::-1]
    ok = np.all((idx >= 0) & (idx < cou_o.shape), axis=1)
    assert ok.mean() > 0.99
    agree = cou_o[tuple(idx[ok].T)] == cou_p[tuple(zyx[ok].T)]
    assert agree.mean() > 0.85
    # lesions at the same physical place
    for a, b in geometry.zip_equal(plain.lesions, other.lesions):
        assert np.linalg.norm(np.subtract(a["centroid_ras"], b["centroid_ras"])) < 2.0
        assert a["main_segment"] == b["main_segment"] or max(a["couinaud_fractions"].values()) < 0.8


# ----------------------------------------------------------------------------- files

def test_write_phantom_round_trip(tmp_path):
    ph = phantom(0, flip=True)
    paths = write_phantom(ph, tmp_path / "case")
    expected = {"ct.nii.gz", "truth_tissue.nii.gz", "truth_couinaud.nii.gz", "truth_lesions.nii.gz",
                "truth.json", "landmarks.mrk.json"}
    assert {p.name for p in paths.values()} == expected
    assert all(p.exists() for p in paths.values())
    for key in ("ct", "truth_tissue", "truth_couinaud", "truth_lesions"):
        back = io.read_image(paths[key])
        assert geometry.same_geometry(back, ph.ct)
        np.testing.assert_array_equal(arr(back), arr(getattr(ph, key)))
    assert io.read_image(paths["ct"]).GetPixelID() == sitk.sitkInt16
    marks = io.read_markups(paths["landmarks"])
    assert set(marks) == set(ph.landmarks)
    for k, p in ph.landmarks.items():
        np.testing.assert_allclose(marks[k], p, atol=1e-3)
    doc = json.loads(paths["truth"].read_text(encoding="utf-8"))
    assert doc["seed"] == 0 and doc["size"] == "small"
    assert doc["spacing"] == pytest.approx(list(ph.ct.GetSpacing()))
    assert doc["liver_volume_ml"] == pytest.approx(ph.liver_volume_ml, rel=1e-4)
    assert sum(doc["couinaud_fractions"].values()) == pytest.approx(1.0, abs=1e-3)
    assert doc["lesions"] == ph.lesions


@pytest.mark.slow
def test_full_size_matches_small_anatomy():
    small = phantom(2, n_lesions=2)
    full = generate_phantom(seed=2, size="full", n_lesions=2)
    nx, ny, nz = full.ct.GetSize()
    sx, sy, sz = full.ct.GetSpacing()
    assert (nx, ny) == (512, 512) and 0.70 <= sx == sy <= 0.82 and 1.5 <= sz <= 2.5 and 80 <= nz <= 160
    assert full.liver_volume_ml == pytest.approx(small.liver_volume_ml, rel=0.03)
    for k in small.landmarks:
        np.testing.assert_allclose(full.landmarks[k], small.landmarks[k], atol=1e-6)
        block, _ = label_near(full, full.landmarks[k], 1)
        assert LANDMARK_LABEL[k] in block, k
    t = arr(full.truth_tissue)
    _, n_pv = ndimage.label(t == labels.TRUTH_PORTAL_VEIN)
    assert n_pv == 1
    par = core(t == labels.TRUTH_PARENCHYMA, 2)
    noise = arr(full.ct).astype(np.float32)[par] - arr(full.ct_clean)[par]
    assert 15 <= noise.std() <= 25
