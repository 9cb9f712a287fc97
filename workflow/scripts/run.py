"""Run the job function a rule names in ``params.step`` (see :mod:`atlas.runner`).

Named inputs, outputs and the other params become keyword arguments. ANTs/ITK output
and Python logging go to the job's log file; ITK threads and the sampling seed are fixed
before ANTs loads.
"""

import logging
import os
import sys

log_file = open(snakemake.log[0], "w")  # noqa: F821, SIM115
os.dup2(log_file.fileno(), 1)
os.dup2(log_file.fileno(), 2)
sys.stdout = sys.stderr = log_file
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

from atlas.registration import set_determinism  # noqa: E402
from atlas.runner import run_job  # noqa: E402

set_determinism(snakemake.config["seed"], snakemake.threads)  # noqa: F821
run_job(
    snakemake.params.step,  # noqa: F821
    **dict(snakemake.input.items()),  # noqa: F821
    **dict(snakemake.output.items()),  # noqa: F821
    **{k: v for k, v in snakemake.params.items() if k != "step"},  # noqa: F821
)
