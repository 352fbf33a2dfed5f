"""Entry point of ``python -m anode_ext.bench`` (also installed as ``anode-bench``)."""

import sys

from .._extras import require


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark report, or name the extra to install when one of its packages is missing."""
    require("bench", "anode-bench")
    # Imported only now: the report's plots import matplotlib at their top.
    from .cli import main as bench

    return bench(argv)


if __name__ == "__main__":
    sys.exit(main())
