"""accelc.passes: the compiler's passes, by family. Each folder may import the compiler core and models, the
shared helpers here (calibration.py: calibration windows and per-layer input statistics; spec_options.py: the
`key=value` parts of a method spec) and the runtime (to run graphs); never targets or the CLI.

    pruning/        structured and unstructured pruning (CFSP, Wanda-SP, FLAP, magnitude, Wanda, DSnoT)
    quantization/   codebooks (AQLM), PV-Tuning / STE tuning, round-to-nearest
    drafting/       the fused self-speculative drafter and its graphs
    export/         the exported-graph modules, ONNX / OpenVINO / genai / native export, validation
"""
