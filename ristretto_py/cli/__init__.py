"""Command-line tools; each module holds one tool (``tools/<name>`` runs it)."""
