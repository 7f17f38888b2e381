"""Core commands: compile, verify, info, run, demo (filled in with the compiler)."""
