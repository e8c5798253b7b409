"""Ingest: turn a file on disk into a model the pipeline can work on, with its input signature."""

from repfx_deploy.ingest.loader import LoadedModel, LoadOptions, load_model

__all__ = ["LoadOptions", "LoadedModel", "load_model"]
