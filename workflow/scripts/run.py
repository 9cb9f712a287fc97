"""Run one job function of the atlas package for a Snakemake job.

The rule names it in ``params.step`` as ``module.function`` of ``atlas`` (a bare
``function`` means ``steps.function``); named inputs, outputs and the other params
become the step's keyword arguments. ANTs/ITK output and Python logging go to the
job's log file; ITK threads and the sampling seed are fixed before ANTs loads.
"""

import logging
import os
import sys

log_file = open(snakemake.log[0], "w")  # noqa: F821, SIM115
os.dup2(log_file.fileno(), 1)
os.dup2(log_file.fileno(), 2)
sys.stdout = sys.stderr = log_file
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(snakemake.threads)  # noqa: F821

import importlib  # noqa: E402

from atlas.registration import set_determinism  # noqa: E402

set_determinism(snakemake.config["seed"], snakemake.threads)  # noqa: F821
kwargs = {
    **dict(snakemake.input.items()),  # noqa: F821
    **dict(snakemake.output.items()),  # noqa: F821
    **{k: v for k, v in snakemake.params.items() if k != "step"},  # noqa: F821
}
module, _, function = snakemake.params.step.rpartition(".")  # noqa: F821
getattr(importlib.import_module(f"atlas.{module or 'steps'}"), function)(**kwargs)
