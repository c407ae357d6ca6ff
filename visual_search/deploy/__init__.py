"""Run the Helm chart's rendered workloads without a cluster (process-level deploy runner)."""
