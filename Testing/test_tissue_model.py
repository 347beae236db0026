"""EM Gaussian mixture (against sklearn), BIC choice of K, mean-field MRF, anchored mixture."""

from __future__ import annotations

import numpy as np
import pytest

from LiverLocalizationLib import tissue_model
from LiverLocalizationLib.errors import InputError


def _three_tissues(n=30000, seed=1):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(105, 20, int(0.75 * n)), rng.normal(30, 15, int(0.1 * n)), rng.normal(160, 15, int(0.15 * n))]


def _sorted_sklearn(samples, k):
    sklearn = pytest.importorskip("sklearn.mixture")
    g = sklearn.GaussianMixture(k, tol=1e-7, max_iter=2000, random_state=0).fit(samples[:, None])
    order = np.argsort(g.means_.ravel())
    return g.means_.ravel()[order], np.sqrt(g.covariances_.ravel()[order]), g.weights_[order]


def test_em_matches_sklearn_within_one_percent():
    x = _three_tissues(n=12000)
    model = tissue_model.fit_gaussian_mixture(x, 3, tol=1e-9, max_iter=5000, bin_width=0)
    means, sds, weights = _sorted_sklearn(x, 3)
    np.testing.assert_allclose(model.means_hu, means, rtol=0.01)
    np.testing.assert_allclose(model.sds_hu, sds, rtol=0.01)
    np.testing.assert_allclose(model.weights, weights, rtol=0.01)
    assert model.names == ["lesion-hypo", "parenchyma", "vessel"]


def test_em_on_a_binned_histogram_gives_the_same_parameters():
    x = _three_tissues(n=80000, seed=2)
    exact = tissue_model.fit_gaussian_mixture(x, 3, bin_width=0)
    binned = tissue_model.fit_gaussian_mixture(x, 3, bin_width=0.5)
    np.testing.assert_allclose(binned.means_hu, exact.means_hu, rtol=0.002)
    np.testing.assert_allclose(binned.sds_hu, exact.sds_hu, rtol=0.005)
    np.testing.assert_allclose(binned.weights, exact.weights, rtol=0.005)


def test_weighted_samples_equal_repeated_samples():
    rng = np.random.default_rng(3)
    values = np.round(np.r_[rng.normal(0, 10, 2000), rng.normal(80, 10, 1000)])
    uniq, counts = np.unique(values, return_counts=True)
    a = tissue_model.fit_gaussian_mixture(values, 2, bin_width=0, tol=1e-10)
    b = tissue_model.fit_gaussian_mixture(uniq, 2, weights=counts, bin_width=0, tol=1e-10)
    np.testing.assert_allclose(a.means_hu, b.means_hu, atol=1e-4)
    np.testing.assert_allclose(a.sds_hu, b.sds_hu, atol=1e-4)


def test_bic_chooses_the_number_of_classes():
    x = _three_tissues(n=12000)
    model = tissue_model.fit_gaussian_mixture(x, None, k_range=(1, 5))
    assert model.n_classes == 3
    assert min(model.bic_by_k, key=model.bic_by_k.get) == 3
    one = tissue_model.fit_gaussian_mixture(np.random.default_rng(0).normal(100, 20, 20000), None, k_range=(1, 4))
    assert one.n_classes == 1


def test_fit_is_deterministic():
    x = _three_tissues(n=5000)
    a = tissue_model.fit_gaussian_mixture(x, None)
    b = tissue_model.fit_gaussian_mixture(x.copy(), None)
    np.testing.assert_array_equal(a.means_hu, b.means_hu)


def test_anchored_mixture_keeps_the_anchor_and_fits_the_rest():
    x = _three_tissues()
    model, anchor = tissue_model.fit_anchored_mixture(x, 105.0, 20.0, k_range=(2, 2))
    assert model.means_hu[anchor] == 105.0 and model.sds_hu[anchor] == 20.0
    others = np.delete(model.means_hu, anchor)
    np.testing.assert_allclose(np.sort(others), [30, 160], atol=5)
    assert model.weights[anchor] == pytest.approx(0.75, abs=0.03)


def test_mrf_reduces_fragmentation_of_a_noisy_two_class_image():
    from scipy import ndimage

    rng = np.random.default_rng(4)
    truth = np.zeros((24, 48, 48), bool)
    truth[:, :, 24:] = True
    img = np.where(truth, 110.0, 80.0) + rng.normal(0, 15, truth.shape)
    model = tissue_model.fit_gaussian_mixture(img.ravel(), 2)
    post = tissue_model.posteriors(img, model)
    raw = np.argmax(post, axis=0) == 1
    smooth = np.argmax(tissue_model.mrf_regularise(post, beta=1.0, iterations=5), axis=0) == 1
    n_raw = ndimage.label(raw)[1] + ndimage.label(~raw)[1]
    n_smooth = ndimage.label(smooth)[1] + ndimage.label(~smooth)[1]
    assert n_smooth < n_raw / 10
    assert (smooth == truth).mean() > (raw == truth).mean() + 0.1
    assert (smooth == truth).mean() > 0.97


def test_posteriors_sum_to_one_inside_the_mask_and_zero_outside():
    x = _three_tissues(n=3000)
    model = tissue_model.fit_gaussian_mixture(x, 3)
    img = np.linspace(-50, 250, 1000, dtype=np.float32).reshape(10, 10, 10)
    mask = np.zeros(img.shape, bool)
    mask[2:8] = True
    post = tissue_model.posteriors(img, model, mask)
    assert post.shape == (3, 10, 10, 10) and post.dtype == np.float32
    np.testing.assert_allclose(post.sum(0)[mask], 1.0, atol=1e-5)
    assert not post[:, ~mask].any()


def test_bad_samples_are_input_errors():
    with pytest.raises(InputError, match="too few"):
        tissue_model.fit_gaussian_mixture(np.arange(5.0), 2)
    with pytest.raises(InputError, match="constant"):
        tissue_model.fit_gaussian_mixture(np.full(100, 7.0), 2)
    with pytest.raises(InputError, match="NaN"):
        tissue_model.fit_gaussian_mixture(np.r_[np.arange(100.0), np.nan], 2)


def test_posteriors_summed_by_class_name_equal_indexing_and_summing():
    """`_sum_by_name` (the MRF's per-name posteriors, summed in place) gives bit for bit what indexing each name's
    classes out and summing them gave, for names with one, two and three classes in any order."""
    from LiverLocalizationLib.tissue_model import _sum_by_name

    rng = np.random.default_rng(0)
    post = rng.random((6, 7, 8, 9), dtype=np.float32)
    class_names = ["parenchyma", "lesion-hypo", "parenchyma", "vessel", "parenchyma", "lesion-hypo"]
    names = list(dict.fromkeys(class_names))
    group = np.array([names.index(n) for n in class_names])
    expected = np.stack([post[group == g].sum(axis=0) for g in range(len(names))])
    np.testing.assert_array_equal(_sum_by_name(post, class_names, names), expected)
    assert _sum_by_name(post, class_names, names).shape == (3, 7, 8, 9)
