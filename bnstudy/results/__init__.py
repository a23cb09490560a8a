"""A study's results on disk: the folder layout, atomic writes and the lock (store), each run's
files checked before anything trusts them (runfiles), and the runs read into per-run and
per-cell tables of declared metrics (aggregate, metrics).

Torch-free.
"""
