"""Automatic supervision for crop requests (paper §3.2): see ``training/curate.py`` and docs."""
