"""Analyze: parameters, sizes and MACs of a model, per layer and in total."""
