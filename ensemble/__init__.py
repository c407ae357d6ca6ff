"""Triton model repository: python-backend model code and the config generator."""
