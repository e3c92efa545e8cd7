"""Real Zeek sample logs shipped for `bflow demo` (see README.md here)."""
