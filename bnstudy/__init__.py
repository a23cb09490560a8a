"""bnstudy: how batch normalization changes LeNet-5 training and test-accuracy stability."""

# The one version source (pyproject.toml reads it; every run's JSON records it). 0.2.0: the
# report's claims.csv and verdict values, comparisons.csv's p columns, new run-file checks.
__version__ = "0.2.0"
