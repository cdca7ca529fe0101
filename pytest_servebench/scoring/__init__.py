"""Judging answers and summing them up: evaluators (one module per answer family), the verdict
of one case, per-task aggregation and the k-sample metrics. Pure: no HTTP, no pytest."""
