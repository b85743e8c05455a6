"""Pruning under tf.distribute.MirroredStrategy with two logical CPU devices.

Logical devices must be configured before TensorFlow initializes its runtime, so the check
runs in a fresh interpreter.
"""

import subprocess
import sys
import textwrap

from conftest import worker_env

SCRIPT = textwrap.dedent("""
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import blockprune
    from blockprune.masks import block_structure
    from toy_pruning import pruned_toy_model, toy_data

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        pruned, plan = pruned_toy_model()
        pruned.compile(keras.optimizers.Adam(0.01), "mse")
    x, y = toy_data()
    pruned.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[blockprune.UpdatePruningStep()])
    report = blockprune.verify(pruned, plan)
    assert report.ok, report.summary()
    kernel = pruned.get_layer("prune_low_magnitude_h").layer.kernel
    replicas = [v.numpy() for v in kernel.value.values] if hasattr(kernel.value, "values") else [kernel.numpy()]
    assert len(replicas) == 2, len(replicas)
    np.testing.assert_array_equal(replicas[0], replicas[1])
    st = block_structure(replicas[0], (1, 16))
    assert st["partial_blocks"] == 0 and st["zero_block_fraction"] == 0.75, st
    print("MIRRORED-OK", report.layers[0].block_sparsity)
""")


def test_mirrored_strategy_two_cpus():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env=worker_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "MIRRORED-OK 0.75" in done.stdout
