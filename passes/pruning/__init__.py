"""Pruning passes (docs/passes/pruning.md): CFSP and its baselines (cfsp.py: cfsp, cfsp-uniform, channel-magnitude;
wanda_sp.py; flap.py; shared channel helpers in mlp_channels.py), masks (sparsity.py: magnitude, wanda; dsnot.py),
spec parsing (prune_options.py) and LoRA recovery. May import passes/calibration.py and the compiler core."""
