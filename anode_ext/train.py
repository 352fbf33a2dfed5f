"""Entry point of ``python -m anode_ext.train`` (also installed as ``anode-train``)."""

import sys

from ._extras import require


def main(argv: list[str] | None = None) -> int:
    """Run the training command, or name the extra to install when one of its packages is missing."""
    require("train", "anode-train")
    # Imported only now: the training modules import tqdm and matplotlib at their top.
    from .training.cli import main as train

    return train(argv)


if __name__ == "__main__":
    sys.exit(main())
