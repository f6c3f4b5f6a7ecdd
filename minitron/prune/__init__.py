"""Structured pruning: plan (target + scores -> kept indices), apply (in memory or shard by shard), search."""
