"""How a Snakemake rule reaches its job function (used by ``workflow/scripts/run.py``).

A rule names its job as ``params.step = "<stage>.<function>"``: the function
``<function>`` of the module ``atlas.<stage>.jobs``. It is called with the rule's named
inputs, named outputs (``out_*``) and the other params as keyword arguments. Job functions
are keyword-only and take no catch-all, so a misspelled or missing name is an error
before any work starts.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable


def job_function(step: str) -> Callable:
    """The job function named by ``step`` (``"<stage>.<function>"``).

    Raises
    ------
    ValueError when ``step`` is not ``stage.function`` or names no job function.
    """
    stage, _, name = step.partition(".")
    if not stage or not name or "." in name:
        raise ValueError(f"params.step {step!r}: expected '<stage>.<function>'")
    try:
        module = importlib.import_module(f"atlas.{stage}.jobs")
    except ModuleNotFoundError as exc:
        raise ValueError(f"params.step {step!r}: no module atlas.{stage}.jobs") from exc
    fn = getattr(module, name, None)
    if not callable(fn) or name.startswith("_"):
        raise ValueError(f"params.step {step!r}: atlas.{stage}.jobs has no job {name!r}")
    return fn


def run_job(step: str, **kwargs):
    """Call the job function of ``step`` with ``kwargs`` after checking the names.

    Raises
    ------
    ValueError for an unknown step; TypeError naming the unknown or missing keyword
    arguments (rule inputs, outputs or params that do not match the job's signature).
    """
    fn = job_function(step)
    sig = inspect.signature(fn)
    accepted = set(sig.parameters)
    unknown = sorted(set(kwargs) - accepted)
    missing = sorted(
        n
        for n, p in sig.parameters.items()
        if p.default is inspect.Parameter.empty and n not in kwargs
    )
    if unknown or missing:
        raise TypeError(
            f"job {step}: rule passes unknown names {unknown} and lacks required names "
            f"{missing} (job signature: {sig})"
        )
    return fn(**kwargs)
