"""Block-sparse kernels. They take packed arrays only (never a Keras object) and compute
``y = x @ W`` over the ``[in, out]`` view; installed as ``blockprune.kernels``.

- ``reference``: NumPy kernels written for clarity, not speed. They are the oracle the tests
  of the packed formats and of the lowered Keras layers compare against; no runtime uses them.
"""
