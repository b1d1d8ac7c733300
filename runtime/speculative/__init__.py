"""Speculative decoding: the draft/verify loop (loop.py), step models over explicit-cache graphs (steps.py), the
fused drafter's graphs in an artifact (artifact.py) and OpenVINO graph functions (openvino.py). Imports only the
runtime and the compiler core."""
