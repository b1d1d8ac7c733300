"""Fixed-size KV caches: the --kv-cache spec and selection rules (policies.py), LoCoCo's compressor (lococo.py) and
the chunked reference run through a fixed cache (fixed_run.py)."""
