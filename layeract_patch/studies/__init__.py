"""Experiments from the paper that are more than training a model: the library side of their recipes.

    scale_correlation  the balance study (Sec. 4.1, Fig. 2)
    presets            the study grids (paper / cpu / smoke) as RunSpecs
    reproduce          the study runner: recipe subprocesses, resume, runs.csv
    report, figures    report.md from runs.csv; stats (Student t, Welch) and paper_numbers feed it
"""
