"""bnstudy: how batch normalization changes LeNet-5 training and test-accuracy stability."""

# The one version source (pyproject.toml reads it; every run's JSON records it). 0.2.0: the
# report's claims.csv and verdict values, comparisons.csv's p columns, new run-file checks.
# 0.3.0: run ids end in 20 hex digits (those of 0.1 and 0.2, 6 digits, are still found),
# one package per stage, figures as PNG only. 0.4.0: a module per backend (a dask worker of
# 0.3 cannot run 0.4's tasks), `bnstudy report --jobs`, old runs not done set aside when redone.
__version__ = "0.4.0"
