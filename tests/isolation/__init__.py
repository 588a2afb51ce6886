"""Real-runtime tests (a package so its module names cannot clash with tests elsewhere)."""
