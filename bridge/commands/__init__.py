"""CLI subcommands that live in their own modules (``bridge compare``, ``profile``, ``report``).

Each module exposes ``add_parser(sub)``: it adds its subparser to ``bridge``'s and sets
``func``; :mod:`bridge.cli` calls it. Modules import nothing heavy at import time.
"""
