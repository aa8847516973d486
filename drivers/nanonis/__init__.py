"""nanonis driver."""
