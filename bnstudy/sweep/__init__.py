"""Running a study: the driver (plan, skip done runs, vet and write results as they arrive,
progress), where its tasks execute (backends) and what they cost (costs).

Torch-free at import: the engine is loaded only where tasks run.
"""
