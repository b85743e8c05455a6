"""Packed formats: exact round trips, scipy's BSR as oracle, reference kernels, the pack file."""

import json

import numpy as np
import pytest
import scipy.sparse

from blockprune.formats import BSR, BlockedELL, detect_block_shape, index_dtype
from blockprune.kernels.reference import bsr_matmul, ell_matmul
from blockprune.masks import block_mask
from blockprune.packfile import PackFileError, inspect_table, load_packed, pack_arrays, save_packed
from blockprune.views import WeightView


def _sparse(shape, block, sparsity, balanced, seed=0, dtype=np.float32):
    w = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    return w * block_mask(w, block, sparsity, balanced=balanced)


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (16, 1), (1, 8), (2, 2), (1, 64)])
@pytest.mark.parametrize("balanced", [False, True])
def test_round_trips_are_exact(block, balanced):
    w = _sparse((128, 256), block, 0.9, balanced)
    for cls in (BSR, BlockedELL):
        m = cls.from_dense(w, block)
        m.validate(full=True)
        back = m.to_dense()
        assert back.dtype == w.dtype and np.array_equal(back, w)


def test_bsr_matches_scipy():
    w = _sparse((64, 96), (4, 2), 0.8, False, seed=3)
    m = BSR.from_dense(w, (4, 2))
    ref = scipy.sparse.bsr_matrix(w, blocksize=(4, 2))
    ref.eliminate_zeros()
    ref.sort_indices()
    theirs = scipy.sparse.bsr_matrix((m.data, m.indices.astype(np.int32), m.indptr.astype(np.int32)), shape=m.shape)
    np.testing.assert_array_equal(theirs.toarray(), w)
    assert m.nnzb == ref.nnz // 8 == int((np.abs(w).reshape(16, 4, 48, 2).sum(axis=(1, 3)) > 0).sum())


def test_reference_kernels_match_dense_and_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 128)).astype(np.float32)
    w = _sparse((128, 64), (1, 8), 0.75, True, seed=4)
    bsr, ell = BSR.from_dense(w, (1, 8)), BlockedELL.from_dense(w, (1, 8))
    expected = x @ w
    np.testing.assert_allclose(bsr_matmul(x, bsr.shape, bsr.data, bsr.indices, bsr.indptr), expected, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(ell_matmul(x, ell.shape, ell.block_rows, ell.data), expected, rtol=1e-5, atol=1e-5)
    via_scipy = (scipy.sparse.csr_matrix(x) @ scipy.sparse.bsr_matrix(w, blocksize=(1, 8))).toarray()
    np.testing.assert_allclose(bsr_matmul(x, bsr.shape, bsr.data, bsr.indices, bsr.indptr), via_scipy, rtol=1e-5,
                               atol=1e-5)


def test_index_dtypes_are_the_narrowest_unsigned():
    assert index_dtype(255) == np.uint8 and index_dtype(256) == np.uint16 and index_dtype(70000) == np.uint32
    w = _sparse((2048, 256), (1, 64), 0.9, True)
    ell = BlockedELL.from_dense(w, (1, 64))
    assert ell.block_rows.dtype == np.uint16  # 2048 block rows
    bsr = BSR.from_dense(w, (1, 64))
    assert bsr.indices.dtype == np.uint8 and bsr.indptr.dtype == np.uint16  # 4 block columns, 820 blocks


def test_blocked_ell_pads_unbalanced_columns_and_refuses_small_k():
    w = np.zeros((4, 4), np.float32)
    w[0, 0:2] = 1
    w[1, 0:2] = 2
    w[3, 2:4] = 3
    ell = BlockedELL.from_dense(w, (1, 2))
    assert ell.k == 2 and ell.block_rows.tolist() == [[0, 1], [0, 3]]  # column 1 padded with block row 0
    assert np.array_equal(ell.to_dense(), w)
    with pytest.raises(ValueError, match="k=1 blocks per block-column cannot hold"):
        BlockedELL.from_dense(w, (1, 2), k=1)


def test_packed_size_is_close_to_the_nonzero_values():
    w = _sparse((2048, 2048), (1, 64), 0.9, True)
    ell = BlockedELL.from_dense(w, (1, 64))
    nonzero_bytes = int((w != 0).sum()) * 4
    packed = ell.nbytes["values"] + ell.nbytes["indices"]
    assert packed <= 1.10 * nonzero_bytes


@pytest.mark.parametrize("cls, attr, bad, message", [
    (BSR, "indices", lambda a: a.astype(np.int64), "unsigned"),
    (BSR, "indptr", lambda a: a[:-1], "indptr has shape"),
    (BlockedELL, "block_rows", lambda a: a[:, ::-1].copy(), "not strictly increasing"),
    (BlockedELL, "block_rows", lambda a: a + 100, "block-row index is >="),
])
def test_validate_catches_bad_arrays(cls, attr, bad, message):
    m = cls.from_dense(_sparse((32, 32), (2, 2), 0.5, True), (2, 2))
    broken = cls(**{**{k: getattr(m, k) for k in m.__dataclass_fields__}, attr: bad(getattr(m, attr))})
    with pytest.raises(ValueError, match=message):
        broken.validate(full=True)


def test_detect_block_shape_prefers_the_largest_exact_block():
    w = _sparse((64, 64), (1, 16), 0.5, True)
    assert detect_block_shape(w, [(1, 8), (1, 16), (4, 1)])[0] == (1, 16)
    assert detect_block_shape(np.ones((8, 8)), [(1, 8)]) is None


def _layers():
    conv = np.random.default_rng(2).normal(size=(1, 1, 64, 128)).astype(np.float32)
    view = WeightView.for_conv(conv.shape)
    conv = view.from_2d(_sparse((64, 128), (1, 8), 0.75, True, seed=5))
    kernels = {"pw/kernel": conv, "d/kernel": _sparse((64, 32), (1, 8), 0.5, True), "head/kernel": np.ones((32, 10))}
    return pack_arrays(kernels, [(1, 8)], balanced=True, views={"pw/kernel": view}), kernels


def test_pack_file_round_trip(tmp_path):
    layers, kernels = _layers()
    assert [layer.format for layer in layers] == ["blocked-ell", "blocked-ell", "dense"]
    path = save_packed(tmp_path / "w.safetensors", layers, {"target": "dsp-1x8"})
    again, header = load_packed(path)
    assert header["target"] == "dsp-1x8"
    for layer in again:
        assert np.array_equal(layer.kernel(), kernels[layer.name]) and layer.kernel().shape == kernels[layer.name].shape
    table = inspect_table(again)
    assert "pw/kernel" in table and "blocked-ell" in table and "(1, 8)" in table and "75.0%" in table


def test_truncated_and_corrupted_files_are_errors(tmp_path):
    layers, _ = _layers()
    path = save_packed(tmp_path / "w.safetensors", layers)
    raw = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PackFileError, match="truncated or corrupted"):
        load_packed(tmp_path / "short.safetensors")
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF  # a value byte of the last array
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(PackFileError, match="fails its checksum"):
        load_packed(tmp_path / "flip.safetensors")
    with pytest.raises(PackFileError, match="no such"):
        load_packed(tmp_path / "missing.safetensors")
    from safetensors.numpy import save_file

    save_file({"a": np.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PackFileError, match="not a blockprune packed-weights file"):
        load_packed(tmp_path / "other.safetensors")


@pytest.mark.parametrize("field, value", [("kernel_shape", [8, 8, 1, 128]), ("view_perm", [1, 0, 2, 3]),
                                          ("view_in_axes", 1), ("format", "bsr"), ("name", "other/kernel")])
def test_an_edited_header_fails_the_checksum(tmp_path, field, value):
    """The header says how the arrays are arranged: editing it must not load rearranged weights."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    path = save_packed(tmp_path / "w.safetensors", _layers()[0])
    with safe_open(str(path), framework="np") as f:
        header = json.loads(f.metadata()["blockprune"])
    entry = next(e for e in header["layers"] if e["name"] == "pw/kernel")
    assert entry[field] != value
    entry[field] = value
    save_file(load_file(str(path)), str(tmp_path / "edited.safetensors"), metadata={"blockprune": json.dumps(header)})
    with pytest.raises(PackFileError, match="fails its checksum|missing array|unknown format|is corrupted"):
        load_packed(tmp_path / "edited.safetensors")


def test_blocked_ell_of_a_view_its_blocks_do_not_divide():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(96, 100)).astype(np.float32)
    w *= block_mask(w, (2, 32), 0.75, balanced=True)  # 3 whole block-columns and one 4 wide
    m = BlockedELL.from_dense(w, (2, 32))
    m.validate(full=True)
    assert m.data.shape == (4, 12, 2, 32) and m.shape == (96, 100)
    np.testing.assert_array_equal(m.to_dense(), w)
    x = rng.normal(size=(3, 96)).astype(np.float32)
    np.testing.assert_allclose(ell_matmul(x, m.shape, m.block_rows, m.data), x @ w, rtol=1e-5, atol=1e-5)
    assert detect_block_shape(w, [(2, 32)])[0] == (2, 32)
