"""Maintenance scripts, run as modules from the repository root: ``python -m scripts.NAME``.

A regular package (not a namespace one), so a ``scripts`` package installed elsewhere can never
shadow these; none of them edits ``sys.path``.
"""
