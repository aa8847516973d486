"""stream driver."""
