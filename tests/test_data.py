"""The built-in datasets, by name."""

import importlib.util

import numpy as np
import pytest

from blockprune.data import BUILTIN_DATA, animal_shapes, digits, load_data


def test_load_data_takes_a_builtin_name_a_file_or_nothing(tmp_path):
    assert load_data(None).name == "digits" and load_data("digits").name == "digits"
    assert set(BUILTIN_DATA) == {"digits", "animal-shapes"}
    with pytest.raises(ValueError, match="data file 'fashion' does not exist"):
        load_data("fashion")
    np.testing.assert_array_equal(load_data("digits").x_test, digits().x_test)


def test_animal_shapes_without_its_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "animal_mnist" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps animal-mnist==0\.4"):
        animal_shapes()


def test_animal_shapes_are_28x28_images_in_10_balanced_classes():
    pytest.importorskip("animal_mnist", reason="pip install --no-deps animal-mnist==0.4")
    data = animal_shapes()
    assert data.x_train.shape == (8000, 784) and data.x_test.shape == (2000, 784)
    assert data.x_train.dtype == np.float32 and 0.0 == data.x_train.min() and data.x_train.max() == 1.0
    assert data.n_classes == 10
    counts = np.bincount(np.concatenate([data.y_train, data.y_test]))
    assert list(counts) == [1000] * 10
    images = animal_shapes(flat=False)
    assert images.x_train.shape == (8000, 28, 28, 1)
    np.testing.assert_array_equal(images.x_train.reshape(8000, -1), data.x_train)  # the same split
