"""The ``ptycli`` subcommands, one module each; importing registers them on ``ptycli.cli.main``."""
