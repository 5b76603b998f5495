"""Reading finished runs into results: the sweep's report (report.py), the paper's study (study.py drives it,
study_runs.py reads it back, tables.py, figures.py and paper.py write its report), convergence and inference cost.

May import: tracking/ (to read runs), nets and data; training/ only to rebuild a logged net for timing. Nothing
imports this package but the command line.
"""
