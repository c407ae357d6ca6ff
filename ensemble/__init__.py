"""Compatibility shim: Triton serving code lives in visual_search/triton/ (see ensemble/generate.py)."""
