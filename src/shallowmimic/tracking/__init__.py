"""MLflow: the store, searching runs, one run's life, the logger, resume, reuse, the registry, logged models,
datasets, descriptions, system metrics and a sweep's parent run.

May import: the leaves (errors, cache, checks, signals), data/, nets, objectives, schedules. Not training/ or
analysis/: they build on this package.
"""
