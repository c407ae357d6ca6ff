"""Visual search: detect, embed, and search catalog images that look like a query photo."""

__version__ = "0.1.0"
