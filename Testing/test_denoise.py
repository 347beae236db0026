"""Denoising: median radius in mm per axis, stable curvature diffusion, exact geometry, measured noise reduction."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LiverLocalizationLib import denoise
from LiverLocalizationLib.errors import InputError


def _noisy_block(spacing=(0.6, 0.6, 2.0), size=(40, 40, 16), sigma=20.0, seed=0, direction=None):
    """A 'liver' cube of 100 HU in fat (-100 HU) with Gaussian noise; returns (noisy, clean, liver mask)."""
    rng = np.random.default_rng(seed)
    clean = np.full(size[::-1], -100.0, np.float32)
    sl = tuple(slice(s // 4, 3 * s // 4) for s in size[::-1])
    clean[sl] = 100.0
    mask = np.zeros(size[::-1], np.uint8)
    mask[sl] = 1
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    images = []
    for arr in (noisy, clean, mask):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        img.SetOrigin((-12.5, 40.25, -300.0))
        if direction is not None:
            img.SetDirection(direction)
        images.append(img)
    return images


def test_median_radius_is_converted_per_axis():
    assert denoise.median_radius_voxels((0.57, 0.57, 1.6), 1.0) == (2, 2, 1)
    assert denoise.median_radius_voxels((0.8, 0.8, 5.0), 1.0) == (1, 1, 0)
    assert denoise.median_radius_voxels((1.0, 2.0, 3.0), 3.0) == (3, 2, 1)


def test_median_filter_matches_sitk_median_with_per_axis_radius():
    noisy, _, _ = _noisy_block(spacing=(0.57, 0.57, 1.6))
    ours = sitk.GetArrayFromImage(denoise.median_filter(noisy, 1.0))
    ref = sitk.GetArrayFromImage(sitk.Median(noisy, [2, 2, 1]))
    np.testing.assert_allclose(ours, ref)
    # a wrong (isotropic) radius would give a different result
    assert not np.allclose(ours, sitk.GetArrayFromImage(sitk.Median(noisy, [1, 1, 1])))


def test_stable_time_step_follows_min_spacing():
    assert denoise.stable_time_step((0.74, 0.74, 2.0)) == pytest.approx(0.9 * 0.74 / 16)
    assert denoise.stable_time_step((0.74, 0.74, 2.0)) < 0.0625  # ITK's default would be unstable here


def test_curvature_diffusion_is_stable_and_reduces_noise():
    noisy, clean, mask = _noisy_block()
    out = denoise.curvature_diffusion(noisy, iterations=10)
    arr = sitk.GetArrayFromImage(out)
    assert np.isfinite(arr).all()
    # no blow-up: values stay within the input's range
    src = sitk.GetArrayFromImage(noisy)
    assert arr.min() >= src.min() - 1 and arr.max() <= src.max() + 1
    before = denoise.denoise_metrics(noisy, mask, clean)
    after = denoise.denoise_metrics(out, mask, clean)
    assert after["noise_sd_hu"] < 0.8 * before["noise_sd_hu"]
    assert after["psnr_db"] > before["psnr_db"] + 2


def test_unstable_time_step_is_refused():
    noisy, _, _ = _noisy_block()
    with pytest.raises(InputError, match="unstable"):
        denoise.curvature_diffusion(noisy, time_step=0.2)


@pytest.mark.parametrize("method", denoise.METHODS)
def test_geometry_is_preserved_exactly_including_oblique(method):
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, 0.0, s, 0.0, 1.0, 0.0, -s, 0.0, c)
    noisy, _, _ = _noisy_block(direction=direction)
    noisy_int = sitk.Cast(noisy, sitk.sitkInt16)
    out = denoise.denoise(noisy_int, method)
    assert out.GetPixelID() == sitk.sitkFloat32
    assert out.GetSize() == noisy.GetSize()
    assert out.GetSpacing() == noisy.GetSpacing()
    assert out.GetOrigin() == noisy.GetOrigin()
    assert out.GetDirection() == noisy.GetDirection()


def test_air_and_table_outside_the_body_box_are_copied_unchanged():
    noisy, _, _ = _noisy_block(size=(80, 40, 16))
    arr = sitk.GetArrayFromImage(noisy)
    arr[:, :, :30] = -1000.0  # air on the patient's right
    arr[:, :, 5:8] = 200.0  # a detached object (table, arm support) in the air
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(noisy)
    start, size = denoise.body_bounding_box(img)
    assert 20 <= start[0] < 30  # the body starts at column 30, boxed at ~4 mm blocks plus a margin
    assert start[0] + size[0] == 80 and size[1] == 40 and size[2] == 16
    out = sitk.GetArrayFromImage(denoise.denoise(img, "median"))
    np.testing.assert_array_equal(out[:, :, :start[0]], arr[:, :, :start[0]])
    assert not np.array_equal(out[:, :, 40:], arr[:, :, 40:])


def test_edge_preserving_filters_keep_the_border_steeper_than_the_median():
    noisy, clean, mask = _noisy_block(spacing=(1.0, 1.0, 1.0), size=(32, 32, 32))
    med = denoise.denoise_metrics(denoise.median_filter(noisy, 2.0), mask, clean)
    bil = denoise.denoise_metrics(denoise.bilateral(noisy, 1.5, 60.0), mask, clean)
    assert bil["edge_hu_per_mm"] > med["edge_hu_per_mm"]


def test_bad_method_and_parameters():
    noisy, _, _ = _noisy_block()
    with pytest.raises(InputError, match="Unknown denoising method"):
        denoise.denoise(noisy, "wavelet")
    with pytest.raises(InputError, match="radius"):
        denoise.median_filter(noisy, 0.0)
    with pytest.raises(InputError, match="iteration"):
        denoise.curvature_diffusion(noisy, iterations=0)


@pytest.mark.parametrize("method", ["median", "curvature"])
def test_region_denoises_only_that_box_and_keeps_geometry(method):
    direction = tuple(sitk.VersorTransform((0.1, 0.2, 0.9), 0.3).GetMatrix())
    noisy, _, _ = _noisy_block(direction=direction)
    start, size = (5, 8, 2), (20, 24, 10)
    out = denoise.denoise(noisy, method, region=(start, size))
    assert out.GetSize() == noisy.GetSize() and out.GetSpacing() == noisy.GetSpacing()
    assert out.GetOrigin() == noisy.GetOrigin() and out.GetDirection() == noisy.GetDirection()
    a, b = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(noisy)
    box = tuple(slice(s, s + n) for s, n in zip(start[::-1], size[::-1]))
    outside = np.ones(a.shape, bool)
    outside[box] = False
    np.testing.assert_array_equal(a[outside], b[outside])  # the input, untouched, outside the box
    crop = sitk.RegionOfInterest(noisy, size, start)
    np.testing.assert_allclose(a[box], sitk.GetArrayFromImage(denoise.denoise(crop, method)), atol=1e-4)
    assert a[box].std() < b[box].std()
    with pytest.raises(InputError, match="does not lie inside the image"):
        denoise.denoise(noisy, method, region=((30, 0, 0), (20, 10, 10)))
