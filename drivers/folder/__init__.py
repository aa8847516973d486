"""folder driver."""
