"""Model-version cutover (R15): re-embed the catalog into new shards, validate, switch, roll back."""
