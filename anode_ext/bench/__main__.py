"""Entry point of ``python -m anode_ext.bench``."""

from .cli import main

raise SystemExit(main())
