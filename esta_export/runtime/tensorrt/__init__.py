"""TensorRT on the device: capability table, device identity, engine build, refit of
weight-stripped engines, the runner, on-device validation and the ``build_engines.py`` CLI.

Part of the runtime (no torch, no esta-export): the bundle and the compile folder's build kit
ship it as ``esta_runtime/tensorrt/``, and the host imports the same code. TensorRT and
cuda-python are imported only inside the functions that build or run an engine, so every module
here imports without them. Written against TensorRT's documented Python API (8.5 to 10.x); NOT
verified on hardware.
"""
