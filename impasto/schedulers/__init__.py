"""See impasto/__init__.py for the public names."""
