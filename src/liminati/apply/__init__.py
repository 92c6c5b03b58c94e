"""Apply: preflight, validation with the real tools, and carrying out a plan."""
