"""Shard schema, shard reader pipeline and the data-side contracts of clap-lightning."""
