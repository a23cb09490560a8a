"""What to run: the run settings, declared once (settings), the variants, activations and
normalization layers as data (variants), and study specs expanded into runs (spec).

Torch-free; everything else imports it.
"""
