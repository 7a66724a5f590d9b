"""CLI commands that wire the pieces together."""
