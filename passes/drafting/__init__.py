"""The fused self-speculative drafter (docs/passes/drafter.md): training (drafter.py, drafter_train.py), its
torch graphs (drafter_model.py) and their export and validation (export_drafter.py). May import passes/export/
(graph modules, ONNX writing) and the runtime's speculative steps."""
