"""The public gateway: Triton for detect/embed, fan-out to shards, merge, re-rank (issue 5)."""
