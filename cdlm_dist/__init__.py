"""cdlm-dist."""
