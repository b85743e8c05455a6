"""Block-sparse kernels. They take packed arrays only (never a Keras object) and compute
``y = x @ W`` over the ``[in, out]`` view; installed as ``blockprune.kernels``.

- ``reference``: NumPy kernels, the oracle for the lowering and the exporters.
"""
