"""The repository's command-line scripts, importable as ``scripts.<name>`` (installed with the project)."""
