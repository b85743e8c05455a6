"""Training data: ``.npz`` files with ``x_train``, ``y_train`` (and optionally ``x_test``,
``y_test``), the built-in datasets (``digits``; ``animal-shapes`` from a registry package), and
checks that data fits a model.

This module does not import TensorFlow.

Example:
    >>> d = digits()                      # scikit-learn's bundled 8x8 digits, no network
    >>> d.x_train.shape[1], d.n_classes
    (64, 10)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._atomic import atomic_path

__all__ = ["Dataset", "digits", "animal_shapes", "BUILTIN_DATA", "load_data", "load_npz", "save_npz", "check_fits"]


@dataclass(frozen=True)
class Dataset:
    """Arrays for training and (optionally) testing."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    name: str = "data"

    @property
    def n_classes(self) -> int | None:
        """Number of classes for integer labels, else None."""
        if self.y_train.dtype.kind in "iu" and self.y_train.ndim == 1:
            ys = self.y_train if self.y_test is None else np.concatenate([self.y_train, self.y_test])
            return int(ys.max()) + 1
        return None


def digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images), scaled to [0, 1], split deterministically.

    Args:
        test_fraction: share of the samples held out for testing.
        seed: seed of the shuffle before the split.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the built-in digits data needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    return _split((bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64), test_fraction, seed, "digits")


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, name: str) -> Dataset:
    """A ``Dataset`` of ``x``, ``y`` shuffled with ``seed`` and split, ``test_fraction`` held out."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test], name=name)


#: The registry package that ships the animal-shapes images, and how to install it: its
#: metadata asks for ``tensorflow`` and ``pandas``, which its data file does not need (and
#: ``tensorflow`` would install a second TensorFlow beside ``tensorflow-cpu``).
ANIMAL_PACKAGE = "animal-mnist==0.4"
ANIMAL_INSTALL = f"pip install --no-deps {ANIMAL_PACKAGE}"


def animal_shapes(test_fraction: float = 0.2, seed: int = 0, flat: bool = True) -> Dataset:
    """10,000 28x28 grayscale animal silhouettes in 10 balanced classes (bear, bird, cat, cow,
    dog, elephant, giraffe, horse, sheep, zebra), scaled to [0, 1] and split deterministically.

    The images ship inside the ``animal-mnist`` package on PyPI (MIT licence), so they install
    offline from a package mirror; blockprune reads its data files directly. Harder than digits:
    an MLP 784-1024-1024-10 reaches about 90% (digits: 98%).

    Args:
        test_fraction: share of the samples held out for testing.
        seed: seed of the shuffle before the split.
        flat: samples of 784 values (else ``28 x 28 x 1`` images).

    Raises:
        ImportError: ``animal-mnist`` is not installed (the message says how to install it).
    """
    import gzip
    import importlib.util
    import pickle

    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the animal-shapes data ships in the animal-mnist package: {ANIMAL_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(folder / name, "rb") as f:  # the package's own pickled NumPy arrays
            arrays.append(np.asarray(pickle.load(f)))
    images, labels = arrays
    x = (images.astype(np.float32) / 255.0).reshape(len(images), *((-1,) if flat else (28, 28, 1)))
    return _split(x, labels.astype(np.int64), test_fraction, seed, "animal-shapes")


#: Datasets ``--data`` accepts by name.
BUILTIN_DATA = {"digits": digits, "animal-shapes": animal_shapes}


def load_data(spec: str | os.PathLike | None) -> Dataset:
    """A built-in dataset by name (``BUILTIN_DATA``), an ``.npz`` file, or digits for None."""
    if spec is None:
        return digits()
    if str(spec) in BUILTIN_DATA:
        return BUILTIN_DATA[str(spec)]()
    return load_npz(spec)


def load_npz(path: str | os.PathLike) -> Dataset:
    """Reads a dataset file.

    Args:
        path: an ``.npz`` with ``x_train`` and ``y_train``, and optionally ``x_test`` and ``y_test``.

    Raises:
        ValueError: a missing file or key, or arrays whose lengths disagree.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"data file '{path}' is not a readable .npz: {e}") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise ValueError(f"data file '{path}' has no '{key}' array (keys: {', '.join(arrays) or 'none'}; "
                             "expected x_train, y_train and optionally x_test, y_test)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"data file '{path}': x_test and y_test must come together")
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is not None and len(x) != len(y):
            raise ValueError(f"data file '{path}': x_{split} has {len(x)} samples but y_{split} has {len(y)}")
    if len(arrays["x_train"]) == 0:
        raise ValueError(f"data file '{path}': x_train is empty")
    return Dataset(arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test"), name=path.name)


def save_npz(data: Dataset, path: str | os.PathLike) -> Path:
    """Writes a dataset as ``.npz`` atomically."""
    path = Path(path)
    arrays = {"x_train": data.x_train, "y_train": data.y_train}
    if data.x_test is not None:
        arrays.update(x_test=data.x_test, y_test=data.y_test)
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def _fits(shape: tuple, spec: tuple) -> bool:
    return len(shape) == len(spec) and all(s is None or s == d for s, d in zip(spec, shape))


def check_fits(data: Dataset, input_shape: tuple, output_shape: tuple, model_name: str) -> None:
    """Raises ``ValueError`` unless the data's samples fit the model's input and output.

    Args:
        data: the dataset.
        input_shape: the model's input shape without the batch axis (None for free axes).
        output_shape: the model's output shape without the batch axis.
        model_name: for the message.
    """
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if x is None:
            continue
        if not _fits(tuple(x.shape[1:]), tuple(input_shape)):
            raise ValueError(f"data '{data.name}': x_{split} samples have shape {tuple(x.shape[1:])} but model "
                             f"'{model_name}' takes inputs of shape {tuple(input_shape)}")
        if y.ndim == 1 and y.dtype.kind in "iu":
            n_out = output_shape[-1] if output_shape else None
            if n_out is not None and (y.min() < 0 or y.max() >= n_out):
                raise ValueError(f"data '{data.name}': y_{split} holds class labels {int(y.min())}..{int(y.max())} "
                                 f"but model '{model_name}' has {n_out} outputs")
        elif not _fits(tuple(y.shape[1:]), tuple(output_shape)):
            raise ValueError(f"data '{data.name}': y_{split} samples have shape {tuple(y.shape[1:])} but model "
                             f"'{model_name}' produces outputs of shape {tuple(output_shape)}")
