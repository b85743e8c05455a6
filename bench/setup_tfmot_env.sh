#!/usr/bin/env bash
# Creates a separate virtual environment with tfmot 0.8.1 for side-by-side benchmarks.
# tfmot needs tf_keras (Keras 2); it is installed with --no-deps so pip does not pull a
# second TensorFlow beside tensorflow-cpu. Usage: bash bench/setup_tfmot_env.sh [DIR]
set -euo pipefail
dir="${1:-$(dirname "$0")/.venv-tfmot}"
python3 -m venv "$dir"
"$dir/bin/pip" install -q "tensorflow-cpu>=2.21,<2.22" "numpy>=2,<3" scikit-learn
"$dir/bin/pip" install -q --no-deps "tf-keras>=2.21,<2.22" "tensorflow-model-optimization==0.8.1" "dm-tree>=0.1.8"
TF_USE_LEGACY_KERAS=1 "$dir/bin/python" -c "import tensorflow_model_optimization as tfmot; print('tfmot', tfmot.__version__)"
echo "$dir/bin/python"
