"""Stand-alone benchmark scripts (not part of the installed package)."""
