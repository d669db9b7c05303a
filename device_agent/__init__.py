"""Device agent: poll, verify, validate, hot-swap (issue 5)."""
