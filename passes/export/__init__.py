"""Export and validation: the torch modules that become the exported graphs (decoder_graph.py, reading names from
compiler/graph.py), ONNX (export_onnx.py, onnx_storage.py, onnx_weights.py), OpenVINO IR (export_openvino.py,
ov_decompression.py), the genai folder, the native backend's weights (export_native.py), and validation through
the runtime (validate.py)."""
