"""Offline retrieval evaluation (R16) and canary probes."""
