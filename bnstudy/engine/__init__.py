"""Training: Fashion-MNIST on the device (data), LeNet from a variant's recipe (models) and
its normalization layers (norms), one run (train) or a group fused into one network (fused),
and the unit every front end calls (runner).

The only package that imports torch (the import contract in pyproject.toml).
"""
