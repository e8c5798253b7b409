"""Data: calibration and evaluation sets, their preprocessing, and input tensors for a signature."""
