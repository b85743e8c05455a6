"""Block-mask math on literal weights with hand-written expected masks."""

import numpy as np
import pytest

from blockprune.masks import block_mask, block_scores, block_structure, kept_block_grid

W4 = np.array([
    [1, 2, 0, 0],
    [3, 4, 0, 1],
    [5, 0, 9, 0],
    [0, 0, 0, 1],
], dtype=np.float32)
# 2x2 block scores: AVG [[2.5, 0.25], [1.25, 2.5]]; MAX [[4, 1], [5, 9]].


def test_block_scores_avg_and_max():
    np.testing.assert_allclose(block_scores(W4, (2, 2), "AVG"), [[2.5, 0.25], [1.25, 2.5]])
    np.testing.assert_allclose(block_scores(-W4, (2, 2), "MAX"), [[4, 1], [5, 9]])


def test_l2_scores_are_the_root_mean_square_of_each_block():
    np.testing.assert_allclose(block_scores(-W4, (2, 2), "L2"),
                               np.sqrt([[30 / 4, 1 / 4], [25 / 4, 82 / 4]]))
    # a last, narrower block-column averages over its real weights only
    np.testing.assert_allclose(block_scores(np.array([[3.0, 4.0, 2.0]]), (1, 2), "L2"), [[np.sqrt(12.5), 2.0]])


def test_l2_keeps_a_block_of_one_large_weight_that_avg_prunes():
    w = np.array([[2.0, 2.0, 2.0, 2.0],
                  [7.0, 0.0, 0.0, 0.0]])  # AVG 2 against 1.75; L2 2 against 3.5
    np.testing.assert_array_equal(block_mask(w, (1, 4), 0.5, "AVG"), [[1, 1, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(block_mask(w, (1, 4), 0.5, "L2"), [[0, 0, 0, 0], [1, 1, 1, 1]])


def test_avg_pooling_mask_4x4():
    expected = np.array([
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 1, 1],
    ])
    np.testing.assert_array_equal(block_mask(W4, (2, 2), 0.5, "AVG"), expected)


def test_max_pooling_mask_4x4_differs():
    expected = np.array([
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 1],
    ])
    np.testing.assert_array_equal(block_mask(W4, (2, 2), 0.5, "MAX"), expected)


def test_4x1_blocks_follow_the_in_out_convention():
    # (4, 1): four consecutive *input* rows of one output column form a block.
    w = np.array([[1, 9, 1, 1],
                  [1, 9, 1, 1],
                  [1, 9, 1, 1],
                  [1, 9, 1, 2]], dtype=np.float32)
    expected = np.array([[0, 1, 0, 1]] * 4)
    np.testing.assert_array_equal(block_mask(w, (4, 1), 0.5), expected)


# 4x8 weights whose 2x2 blocks are constant: block scores [[8, 7, 1, 2], [6, 5, 3, 4]].
W8 = np.kron(np.array([[8, 7, 1, 2], [6, 5, 3, 4]], dtype=np.float32), np.ones((2, 2), np.float32))


def test_unbalanced_mask_4x8_can_empty_whole_block_columns():
    expected = np.array([
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(block_mask(W8, (2, 2), 0.5), expected)


def test_balanced_mask_4x8_keeps_one_block_per_block_column():
    expected = np.array([
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ])
    np.testing.assert_array_equal(block_mask(W8, (2, 2), 0.5, balanced=True), expected)


def test_exact_count_of_zero_blocks():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 48)).astype(np.float32)
    for s in (0.0, 0.3, 0.5, 0.9, 0.95):
        grid = kept_block_grid(block_scores(w, (4, 4)), s)
        assert (~grid).sum() == round(s * grid.size)
        bal = kept_block_grid(block_scores(w, (4, 4)), s, balanced=True)
        assert ((~bal).sum(axis=0) == round(s * bal.shape[0])).all()


def test_ties_keep_the_first_block():
    w = np.ones((1, 8), np.float32)
    np.testing.assert_array_equal(block_mask(w, (1, 2), 0.5), [[1, 1, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(block_mask(np.ones((4, 2)), (1, 1), 0.5, balanced=True),
                                  [[1, 1], [1, 1], [0, 0], [0, 0]])


def test_already_pruned_blocks_stay_pruned_as_sparsity_rises():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(32, 32))
    m1 = block_mask(w, (4, 1), 0.5)
    m2 = block_mask(w * m1, (4, 1), 0.8)
    assert not ((m1 == 0) & (m2 == 1)).any()


@pytest.mark.parametrize("kwargs, message", [
    ({"block_shape": (3, 2)}, r"block_shape=\(3, 2\) does not divide the \[in, out\] view \(4, 4\)"),
    ({"sparsity": 1.0}, r"sparsity=1.0 is outside \[0, 1\)"),
    ({"sparsity": -0.5}, r"outside \[0, 1\)"),
    ({"pooling": "MEDIAN"}, "block_pooling_type='MEDIAN'"),
])
def test_bad_arguments(kwargs, message):
    args = {"weight2d": W4, "block_shape": (2, 2), "sparsity": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        block_mask(**args)


def test_block_structure_reports_partial_blocks():
    st = block_structure(W4 * block_mask(W4, (2, 2), 0.5), (2, 2))
    assert st["zero_block_fraction"] == 0.5 and st["partial_blocks"] == 1  # block (1,1) holds zeros
    assert st["kept_per_block_column"] == (1, 1)
    assert block_structure(np.ones((4, 4)), (2, 2))["partial_blocks"] == 0


def test_reachable_sparsity_matches_block_mask():
    from blockprune.masks import reachable_sparsity

    w = np.random.default_rng(3).normal(size=(32, 192))
    for balanced in (False, True):
        st = block_structure(w * block_mask(w, (1, 8), 0.95, balanced=balanced), (1, 8))
        assert st["zero_block_fraction"] == pytest.approx(reachable_sparsity((32, 192), (1, 8), 0.95, balanced))
    assert reachable_sparsity((32, 192), (1, 8), 0.95, True) == 30 / 32


def test_a_last_narrower_block_column_is_one_block():
    # W4 with its last column dropped: (2, 2) blocks leave a last block-column one wide.
    w = W4[:, :3]
    # AVG over the real weights only: block (0, 1) holds [0, 0] -> 0; block (1, 1) holds [9, 0] -> 4.5
    np.testing.assert_allclose(block_scores(w, (2, 2), "AVG"), [[2.5, 0.0], [1.25, 4.5]])
    expected = np.array([
        [1, 1, 0],
        [1, 1, 0],
        [0, 0, 1],
        [0, 0, 1],
    ])
    np.testing.assert_array_equal(block_mask(w, (2, 2), 0.5, "AVG", balanced=True), expected)
    st = block_structure(w * expected, (2, 2))
    # the kept narrow block [9, 0] has one zero of its own; padding is not counted as zeros
    assert st["partial_blocks"] == 1 and st["zero_block_fraction"] == 0.5 and st["kept_per_block_column"] == (1, 1)
    with pytest.raises(ValueError, match=r"block_shape=\(2, 4\) does not divide the \[in, out\] view \(4, 3\)"):
        block_mask(w, (2, 4), 0.5)
