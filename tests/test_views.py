"""The one [in, out] flattening helper, and the EinsumDense view."""

import numpy as np
import pytest

from blockprune.views import WeightView, einsum_view


def test_dense_view_is_the_kernel():
    w = np.arange(12.0).reshape(3, 4)
    v = WeightView.for_dense(w.shape)
    assert v.view_shape == (3, 4) and v.is_identity
    np.testing.assert_array_equal(v.to_2d(w), w)


def test_conv_view_rows_are_kh_kw_cin():
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 8))
    v = WeightView.for_conv(w.shape)
    assert v.view_shape == (36, 8)
    # Row r of the view is kernel[kh, kw, cin] flattened in C order, column = output channel.
    np.testing.assert_array_equal(v.to_2d(w)[1 * 12 + 2 * 4 + 3], w[1, 2, 3])
    np.testing.assert_array_equal(v.from_2d(v.to_2d(w)), w)


def test_einsum_view_of_attention_projections():
    q = einsum_view("abc,cde->abde", (16, 2, 8))
    assert q.view_shape == (16, 16) and q.n_in_axes == 1
    out = einsum_view("abcd,cde->abe", (2, 8, 16))
    assert out.view_shape == (16, 16) and out.n_in_axes == 2


def test_einsum_view_reorders_contracted_axes_first():
    v = einsum_view("abc,dc->abd", (5, 3))  # kernel stored [out, in]
    assert v.perm == (1, 0) and v.view_shape == (3, 5)
    w = np.arange(15.0).reshape(5, 3)
    np.testing.assert_array_equal(v.to_2d(w), w.T)
    np.testing.assert_array_equal(v.from_2d(v.to_2d(w)), w)
    # The view really is the matrix the layer multiplies by.
    x = np.arange(6.0).reshape(1, 2, 3)
    np.testing.assert_allclose(np.einsum("abc,dc->abd", x, w), x @ v.to_2d(w))


@pytest.mark.parametrize("equation, kernel_shape, message", [
    ("abc,bcd->abd", (3, 4, 5), "shared by input and output"),
    ("ab,bc", (3, 4), "cannot parse"),
    ("...b,bc->...c", (3, 4), "'...'"),
    ("ab,bcd->ac", (3, 4, 5), "summed on its own"),
    ("ab,bc->ac", (3, 4, 5), "names 2 kernel axes"),
])
def test_einsum_equations_without_a_single_matrix(equation, kernel_shape, message):
    with pytest.raises(ValueError, match=message):
        einsum_view(equation, kernel_shape)


def test_rank_one_has_no_view():
    with pytest.raises(ValueError, match="at least 2 axes"):
        WeightView.for_matrix_like((7,))


def test_shape_mismatch_is_an_error():
    v = WeightView.for_dense((3, 4))
    with pytest.raises(ValueError, match=r"expected a kernel of shape \(3, 4\)"):
        v.to_2d(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"expected a view of shape \(3, 4\)"):
        v.from_2d(np.zeros((4, 3)))


def test_json_round_trip():
    v = einsum_view("abcd,cde->abe", (2, 8, 16))
    assert WeightView.from_json(v.to_json()) == v
