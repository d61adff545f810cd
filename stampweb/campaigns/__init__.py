"""campaigns services."""
