"""Features: keel's thin layer over Feast (apply, materialize,
point-in-time training sets with content-hashed snapshots)."""
