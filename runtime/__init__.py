"""accelc.runtime: open artifacts, pick a backend and device, decode (plain and speculative)."""
