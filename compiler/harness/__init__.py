"""Benchmark and evaluation harnesses (top layer, beside the CLI): they drive the runtime and other engines
(transformers, optimum-intel, openvino-genai) and score artifacts. Kept out of runtime/, which is what an app
ships (tests/architecture.ini forbids the runtime from importing this package)."""
