"""loyalty services."""
