"""``forgather``: the command line (click). Subcommands are imported lazily; see main.py."""
