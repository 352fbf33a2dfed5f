"""Entry point of ``python -m anode_ext.train`` (also installed as ``anode-train``)."""

import sys

from .training.cli import main

if __name__ == "__main__":
    sys.exit(main())
