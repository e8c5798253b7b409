"""Measure: time a model on a runtime, with warm-up, repeats and robust statistics."""
