"""Reproductions of the paper's experiments: Figure 1 timings and Section 4.2 training with projection.

* :mod:`convspectra.experiments.figure1`: timing of the full-matrix SVD, the paper's NumPy method and
  convspectra (CPU, CUDA) over channel counts (``convspectra bench figure1``).
* :mod:`convspectra.experiments.datasets`: CIFAR-10 / Fashion-MNIST readers and synthetic test data
  (:mod:`~convspectra.experiments.idx`: the IDX file format).
* The resumable ResNet training runner (``convspectra train``), one idea per module:
  :mod:`~convspectra.experiments.config` (:class:`TrainConfig`, the arms, the learning-rate schedule),
  :mod:`~convspectra.experiments.batches` (normalised, augmented mini-batches),
  :mod:`~convspectra.experiments.convolutions` (the controlled layers as :mod:`convspectra.nn` records:
  projection and logged spectra), :mod:`~convspectra.experiments.checkpoint` (atomic checkpoint and log),
  :mod:`~convspectra.experiments.training` (the run loop: :func:`train_run`, :func:`run_experiment`).
* :mod:`convspectra.experiments.summary`: per-arm statistics and Figure 2-3 style plots.
* :mod:`convspectra.experiments.machine`: what a measurement ran on.

Everything here but :mod:`~convspectra.experiments.config` and the dataset readers needs ``torch``;
plots need ``matplotlib`` (optional).
"""
