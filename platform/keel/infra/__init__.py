"""Infrastructure helpers used by every part of keel (not owned by the local stack)."""
