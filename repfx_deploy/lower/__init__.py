"""Lower: torch -> ONNX, checked, shape-inferred, constant-folded, stamped with metadata and verified."""
