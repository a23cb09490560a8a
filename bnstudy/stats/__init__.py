"""The statistics: paired contrasts (the exact sign-flip test, the t interval and the seed
planner, all by scipy; contrasts) and every claim of a report decided together with Holm's
correction (claims).

Torch-free; knows nothing of runs or reports, only paired numbers.
"""
