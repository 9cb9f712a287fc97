"""Longitudinal stage (issue 12): sessions and ages, single-subject templates (SST) built by
the population template's SyGN jobs, per-session volumes and Jacobians, change tables and a
linear mixed-effects model of volume against age.

Modules: :mod:`.sessions` (ages per session from BIDS tables), :mod:`.plan` (config checks,
which subjects are longitudinal, SST iteration settings), :mod:`.change` (volumes, Jacobian
integration, change and annualised change), :mod:`.models` (statsmodels ``mixedlm``),
:mod:`.jobs` (job functions of ``workflow/rules/longitudinal.smk``), :mod:`.sst` (the same SST
jobs chained in one process and the % change through it, for tests and benchmarks),
:mod:`.simulate` (follow-ups with a known shrink, for the accuracy test and benchmark).
"""
