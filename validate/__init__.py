"""Is the deployed artefact still the model? Parity and accuracy of every backend against PyTorch.

* :mod:`validate.parity` (``python -m validate.parity``): Polygraphy ``Comparator`` run of the
  PyTorch reference, or of the FP32 graph in ONNX Runtime where PyTorch is not needed or not
  installed (:mod:`validate.reduced`), against ONNX Runtime and TensorRT, with a verdict.
* :mod:`validate.accuracy` (``python -m validate.accuracy``): top-1/top-5 and images/s per backend.
* :mod:`validate.runners`: the backend contract (Polygraphy runners), shared with ``benchmarks/``.
"""
