"""The PNG figures carry what a reader needs: legends, a scale bar in mm, patient direction letters that stay
right for flipped storage, slice positions in mm, landmarks only on slices near them, lesions at their centres."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("matplotlib")

from LiverLocalizationLib import couinaud, geometry  # noqa: E402
from LiverLocalizationLib.figures import classifier as classifier_figure  # noqa: E402
from LiverLocalizationLib.figures import common, overview  # noqa: E402
from LiverLocalizationLib.figures import couinaud as couinaud_figure  # noqa: E402
from test_couinaud import box_landmarks, box_liver  # noqa: E402

FLIP_X = np.diag([-1.0, 1.0, 1.0])


def _letters(ax) -> dict[str, str]:
    return {t.get_gid().split(":")[1]: t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("orientation:")}


def _drawn_landmarks(ax) -> set[str]:
    return {line.get_gid().split(":")[1] for line in ax.lines if (line.get_gid() or "").startswith("landmark:")}


def _png(path) -> bool:
    return path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _stored_flipped_x(array_zyx: np.ndarray, spacing=(2.0, 2.0, 2.5)) -> sitk.Image:
    """`array_zyx` given in LPS order (x: patient right → left) stored with x reversed (index i runs to the
    patient's right): the same patient, another storage."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx[:, :, ::-1]))
    image.SetSpacing(spacing)
    image.SetDirection(tuple(FLIP_X.ravel()))
    image.SetOrigin(((array_zyx.shape[2] - 1) * spacing[0], 0.0, 0.0))
    return image


# ------------------------------------------------------------------------------------------ common helpers

def test_orientation_letters_follow_the_direction_matrix():
    image = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    assert common.orientation(image, "axial") == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert common.orientation(image, "coronal") == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert common.orientation(image, "sagittal") == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    image.SetDirection(tuple(FLIP_X.ravel()))  # the raw array of x-flipped storage would show L on the left
    assert common.orientation(image, "axial")["left"] == "L"
    # once resampled for display it is radiological again
    assert common.orientation(common.to_lps_aligned(image), "axial")["left"] == "R"


def test_slice_position_and_distance_are_in_mm():
    image = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetOrigin((0.0, 0.0, -30.0))
    assert common.slice_position(image, "axial", 4) == "S \u221218.0 mm"
    assert common.slice_position(image, "coronal", 5) == "A \u221210.0 mm"  # LPS y = +10 is posterior
    assert common.distance_to_slice_mm(image, "axial", 4, (3.0, 3.0, -12.0)) == pytest.approx(6.0)


# ------------------------------------------------------------------------------------------ overview.png

def _overview_case():
    """A 60 × 50 × 20 body with a bright spot in the patient's right half, a liver and one lesion at z 6..10."""
    ct = np.full((20, 50, 60), -1000.0, np.float32)
    ct[:, 5:45, 5:55] = 40.0
    ct[:, 20:30, 10:20] = 300.0  # low x = the patient's right
    liver = np.zeros(ct.shape, np.uint8)
    liver[2:18, 10:40, 8:40] = 1
    lesion = np.zeros(ct.shape, np.uint8)
    lesion[6:11, 20:26, 25:31] = 1
    tissue = liver + lesion
    return [_stored_flipped_x(a) for a in (ct, ct, liver, tissue, lesion)]


def test_overview_has_legend_scale_letters_and_positions_for_flipped_storage(tmp_path):
    ct, den, liver, tissue, lesion = _overview_case()
    fig = overview.plot_overview(ct, den, liver, tissue, lesion, tmp_path / "overview.png", n_slices=2,
                                 return_figure=True)
    assert _png(tmp_path / "overview.png")
    words = common.texts(fig)
    for entry in ("liver mask", "parenchyma", "vessel", "lesion", "lesion outline (id)"):
        assert entry in words
    assert any(w.endswith(" mm") for w in common.texts(fig, "scalebar"))
    assert "input − denoised (HU)" in words  # the noise panel's colour bar has its unit
    assert not any("z=" in w for w in words) and not any("resized" in w for w in words)
    ax = fig.axes[0]
    assert _letters(ax) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    # the bright spot (patient's right) is shown on the viewer's left although storage runs the other way
    shown = ax.images[0].get_array()
    assert shown[:, : shown.shape[1] // 2].mean() > shown[:, shown.shape[1] // 2:].mean()
    # the lesion's row is its centre slice (z index 8 of 0..19, 2.5 mm): S 20 mm
    assert any("S 20.0 mm" in w and "centre of lesion 1" in w for w in words)


def test_lesion_centre_slices_use_each_lesion_centre():
    lab = np.zeros((30, 10, 10), np.uint8)
    lab[4:11, 2:5, 2:5] = 1  # centre 7
    lab[20:23, 5:8, 5:8] = 2  # centre 21
    assert overview.lesion_centre_slices(lab, 3) == [(7, [1]), (21, [2])]


# ------------------------------------------------------------------------------------------ couinaud.png

@pytest.fixture(scope="module")
def couinaud_figure_flipped(tmp_path_factory):
    liver = box_liver(direction=FLIP_X, centre=np.array([0.0, 30.0, 40.0]))
    marks = box_landmarks()
    res = couinaud.map_couinaud(liver, marks, method="planes")
    les = np.zeros(sitk.GetArrayViewFromImage(liver).shape, np.uint16)
    les[28:34, 55:65, 20:30] = 1
    lesion = geometry.copy_geometry(les, liver)
    ct = sitk.Cast(liver, sitk.sitkInt16) * 100
    path = tmp_path_factory.mktemp("cou") / "couinaud.png"
    fig = couinaud_figure.plot_couinaud(ct, res.labels, marks, lesion, path, return_figure=True)
    return fig, path, marks, ct


def test_couinaud_figure_has_legend_scale_and_letters(couinaud_figure_flipped):
    fig, path, _, _ = couinaud_figure_flipped
    assert _png(path)
    words = common.texts(fig)
    for entry in ("hepatic vein (RHV, MHV, LHV)", "portal vein (RPV, LPV, UP)", "lesion outline (id)",
                  "landmarks (on slices within 5 mm)"):
        assert entry in words
    assert any(w.strip().startswith("VIII") and "ml" in w for w in words)
    assert len(common.texts(fig, "scalebar")) >= 6 and all(w.endswith(" mm") for w in common.texts(fig, "scalebar"))
    panels = [ax for ax in fig.axes if _letters(ax)]
    axial = [ax for ax in panels if "axial" in ax.get_title()]
    coronal = [ax for ax in panels if "coronal" in ax.get_title()]
    sagittal = [ax for ax in panels if "sagittal" in ax.get_title()]
    assert axial and coronal and sagittal
    assert all(_letters(ax)["left"] == "R" and _letters(ax)["top"] == "A" for ax in axial)
    assert _letters(coronal[0]) == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert _letters(sagittal[0])["left"] == "A"
    assert not any(ax.name == "3d" for ax in fig.axes)
    assert all(" mm" in ax.get_title() for ax in panels)  # positions in mm


def test_couinaud_landmarks_only_on_slices_near_them(couinaud_figure_flipped):
    fig, _, marks, ct = couinaud_figure_flipped
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("hepatic veins"))
    drawn = _drawn_landmarks(panel)
    # the hepatic veins lie on this slice; the portal landmarks 30-50 mm below it do not
    assert {"IVC", "RHV", "MHV", "LHV"} <= drawn
    assert not drawn & {"RPV", "LPV", "UP", "IVC_inferior"}
    for ax in fig.axes:
        title = ax.get_title()
        if not _letters(ax):
            continue
        view = next(v for v in common.VIEWS if v in title)
        for name in _drawn_landmarks(ax):
            # every drawn landmark's slice position lies within the slab of the panel's stated position
            stated = float(title.rsplit(" ", 2)[-2].replace("\u2212", "-"))
            axis = common.VIEWS[view][0]
            coord = marks[name][axis] * (1.0 if view == "axial" else -1.0)  # RAS name of the LPS axis
            assert abs(coord - stated) <= common.LANDMARK_SLAB_MM + 0.1, (title, name)


def test_landmarks_on_slice_threshold():
    image = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    marks = {"near": np.array([0.0, 0.0, 8.9]), "far": np.array([0.0, 0.0, 9.1]), "on": np.array([5.0, 5.0, 4.0])}
    assert couinaud_figure.landmarks_on_slice(image, "axial", 4, marks) == ["near", "on"]


# ------------------------------------------------------------------------------------------ gradcam.png

def test_gradcam_figure_has_scale_letters_and_colour_bar(tmp_path):
    pytest.importorskip("scipy")
    ct_arr = np.full((30, 40, 40), 60.0, np.float32)
    les = np.zeros(ct_arr.shape, np.uint16)
    les[12:18, 15:22, 16:24] = 1
    ct_arr[les > 0] = 0.0
    ct, lesion = _stored_flipped_x(ct_arr, (1.5, 1.5, 2.0)), _stored_flipped_x(les, (1.5, 1.5, 2.0))
    cam = _stored_flipped_x((les > 0).astype(np.float32), (1.5, 1.5, 2.0))
    rows = [{"id": 1, "kind": "cyst", "malignant_probability": 0.02, "volume_ml": 1.0}]
    fig = classifier_figure.plot_gradcam_panels(ct, lesion, cam, rows, tmp_path / "gradcam.png", return_figure=True)
    assert _png(tmp_path / "gradcam.png")
    words = common.texts(fig)
    assert any(w.startswith("Grad-CAM (0: no weight") for w in words)  # colour bar with its meaning
    assert "lesion mask outline (white on Grad-CAM)" in words
    assert len(common.texts(fig, "scalebar")) == 3
    image_axes = [ax for ax in fig.axes if ax.images and _letters(ax)]
    assert len(image_axes) == 3 and all(_letters(ax)["left"] == "R" for ax in image_axes)
    assert "lesion centre" in image_axes[0].get_ylabel() and " mm" in image_axes[0].get_ylabel()


def test_label_centres_are_each_labels_mean_voxel_largest_first():
    import numpy as np

    from LiverLocalizationLib.figures import common

    lab = np.zeros((10, 12, 14), np.uint16)
    lab[1:3, 2:4, 3:5] = 5  # 8 voxels, centre (1.5, 2.5, 3.5)
    lab[4:8, 6:10, 8:12] = 2  # 64 voxels
    lab[9, 0, 0] = 7  # 1 voxel
    centres = common.label_centres_zyx(lab)
    assert [v for v, _ in centres] == [2, 5, 7]
    for value, centre in centres:
        assert np.allclose(centre, np.argwhere(lab == value).mean(0))
    assert common.label_centres_zyx(np.zeros((3, 3, 3), np.uint8)) == []
