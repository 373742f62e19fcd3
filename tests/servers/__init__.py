"""Real servers for the test suite, started on loopback (or reused from an env var)."""
