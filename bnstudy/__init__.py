"""bnstudy: how batch normalization changes LeNet-5 training and test-accuracy stability."""

__version__ = "0.1.0"
