"""Reproductions of the paper's experiments: Figure 1 timings and Section 4.2 training with projection.

* :mod:`convspectra.experiments.figure1`: timing of the full-matrix SVD, the paper's NumPy method and
  convspectra (CPU, CUDA) over channel counts (``convspectra bench figure1``).
* :mod:`convspectra.experiments.datasets`: CIFAR-10 / Fashion-MNIST readers and synthetic test data.
* :mod:`convspectra.experiments.training`: the resumable ResNet training runner (``convspectra train``).
* :mod:`convspectra.experiments.summary`: per-arm statistics and Figure 2-3 style plots.

Everything here needs ``torch``; plots need ``matplotlib`` (optional).
"""
