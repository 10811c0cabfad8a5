"""``python -m ptycli``: the same as the ``ptycli`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="ptycli")
