"""Benchmarks of anode_ext: fused ops, ODE blocks and whole models (``python -m anode_ext.bench``)."""
