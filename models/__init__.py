"""accelc.models: model sources, architecture adapters, tiny test configs, text corpora."""
