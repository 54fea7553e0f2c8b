"""The study: every variant of the question trained as vmapped sweeps, then a report.

``presets.py`` (plain data, no JAX: the CLI lists presets without starting JAX) gives the grids
as a base config plus the axes that vary, built from ``design.py``'s types; ``run.py`` expands a preset into member configs and
trains them (``loop.Loop``); ``results.py`` chooses and summarises; ``report.py`` writes
``report.md``; ``figures.py`` draws. Import the submodules; this package imports nothing.
"""
