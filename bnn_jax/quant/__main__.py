"""Print the registry's markdown table, or write it into README.md with ``--write-readme``."""

import pathlib
import re
import sys

from bnn_jax.quant import markdown_table

START, END = "<!-- quantizer-table:start -->", "<!-- quantizer-table:end -->"


def write_readme(path: pathlib.Path) -> None:
    """Replace the text between the README's quantizer-table markers with the current table."""
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    block = f"{START}\n{markdown_table()}\n{END}"
    path.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text,
                           flags=re.S))


if __name__ == "__main__":
    if "--write-readme" in sys.argv:
        write_readme(pathlib.Path(__file__).resolve().parents[2] / "README.md")
    else:
        print(markdown_table())
