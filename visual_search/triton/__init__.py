"""Serving on Triton: repository generation lives in ensemble/, launching and clients here."""
