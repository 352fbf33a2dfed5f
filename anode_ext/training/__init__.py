"""The training command (``python -m anode_ext.train``): data, loop, checkpoints, metrics."""
