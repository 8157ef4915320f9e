"""Repository tools (not installed; imported by tests with the repository root on sys.path)."""
