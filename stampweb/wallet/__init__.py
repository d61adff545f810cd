"""wallet services."""
