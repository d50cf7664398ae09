"""Deployment packages: what Triton, DeepStream and a Jetson need to run an exported IdleViT.

* :mod:`.source`: the model being packaged (an ONNX, or an engine with its sidecar) and every
  fact the generated files need;
* :mod:`.pbtxt`: protobuf text format from nested dicts and lists;
* :mod:`.triton`: the ``config.pbtxt`` of a Triton model repository entry, as a structure;
* :mod:`.deepstream`: the nvinfer config, its preprocessing and the network-mode table;
* :mod:`.guide`: the DEPLOY.md guide;
* :mod:`.writer`: the package on disk, with its manifest, so that a new package never eats edits.

``python -m engines.package`` is the command on top. Nothing here is imported by ``--help``.
"""
