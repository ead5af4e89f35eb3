"""/sync and filters."""
