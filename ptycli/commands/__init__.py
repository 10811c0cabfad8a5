"""The ``ptycli`` subcommands, one module each; ``ptycli.cli`` imports a module when its command is first used."""
