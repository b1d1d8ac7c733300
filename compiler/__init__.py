"""accelc.compiler: the pass framework, the bundle passes transform, the artifact, the CLI."""
