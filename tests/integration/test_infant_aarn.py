"""The age-conditional affine rescaling network (AARN) on real infant scans (issue 4).

The 8 skull-stripped scans of ``../shared/data/infant/bids`` (7 infants, 1-23 months, and a
6-year-old) go through the real Snakefile at 3 mm: preprocessing (brain-only detected),
affine normalisation to the published BCP 4D infant atlas at 12 months, and the AARN fitted
to the normalisation affines (rule ``learned_aarn``, ages in months). The brain roughly
doubles in volume over the first two years, so the fitted isotropic scale must grow with age.
About 2 minutes on 2 cores. A dry run checks that the tissue variants plan one Atropos
tissue job per image (cohort source).
"""

import re
from pathlib import Path

import ants
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration

AGES = [1, 6, 12, 24]  # months


def _config(infant: Path, tmp: Path, **learned) -> dict:
    """The infant run: 3 mm, normalised to the BCP 12-month atlas, ages in months."""
    bcp = infant / "templates" / "tpl-UNCBCP4DInfant"
    return {
        "bids_dir": str(infant / "bids"),
        "output_dir": str(tmp / "out"),
        "work_dir": str(tmp / "work"),
        "resolution": 3.0,
        "reference": str(bcp / "tpl-UNCBCP4DInfant_cohort-12_desc-brain_T1w.nii.gz"),
        "learned": {"enabled": True, "ages": AGES, "age_units": "months"} | learned,
    }


@pytest.fixture(scope="module")
def aarn_table(shared_data, tmp_path_factory, run_workflow):
    infant = shared_data / "infant"
    tmp = tmp_path_factory.mktemp("infant")
    table = tmp / "out" / "learned" / "aarn.tsv"
    run_workflow(tmp, _config(infant, tmp), targets=[table])
    bcp = infant / "templates" / "tpl-UNCBCP4DInfant"
    return pd.read_csv(table, sep="\t").set_index("age"), bcp


def test_tissue_variant_plans_one_atropos_job_per_image(shared_data, tmp_path, run_workflow):
    """Cohort source with tissue_weight > 0 (GAN + tissue): a dry run plans one
    learned_tissue job (Atropos) per image, each an input of the training job."""
    config = _config(shared_data / "infant", tmp_path, tissue_weight=1.0, adversarial=True)
    model = tmp_path / "out" / "learned" / "model.pt"
    proc = run_workflow(tmp_path, config, targets=[model, "--dry-run"])
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.MULTILINE))
    assert counts["learned_tissue"] == counts["normalise"] == "8"
    assert counts["learned_train"] == "1"


def _brain_ml(bcp: Path, cohort: int) -> float:
    """Brain volume (mL, non-zero voxels) of the BCP atlas at ``cohort`` months."""
    image = ants.image_read(
        str(bcp / f"tpl-UNCBCP4DInfant_cohort-{cohort:02d}_desc-brain_T1w.nii.gz")
    )
    return float((image.numpy() > 0).sum() * np.prod(image.spacing) / 1000.0)


def test_aarn_scale_grows_with_age(aarn_table):
    """Measured (seed 0): AARN scale 0.70, 0.93, 1.04, 0.97 at 1, 6, 12, 24 months; the BCP
    atlas's linear size relative to its 12-month cohort is 0.81, 0.95, 1.00, 1.04 at 0, 6, 12,
    24 months."""
    table, bcp = aarn_table
    scale = table["scale"]
    size = {m: (_brain_ml(bcp, m) / _brain_ml(bcp, 12)) ** (1 / 3) for m in (0, 6, 12, 24)}
    print(table.to_string(), "\nBCP linear size relative to 12 months:", size)
    assert scale[24] > scale[1]
    # Growth: the BCP brain grows by a linear factor of 1.29 from birth to 24 months; the AARN,
    # fitted to 7 infants, must show at least half of that growth from 1 to 24 months.
    assert scale[24] / scale[1] - 1 > 0.5 * (size[24] / size[0] - 1)
    # Absolute size: the reference is the 12-month atlas, so the AARN scale at 6, 12 and 24
    # months estimates the atlas's size relative to 12 months. One or two infants per age
    # with a brain-volume SD of about 10 % between individuals (about 3.5 % in linear size)
    # make a few per cent of error expected; 10 % is the bound.
    for months in (6, 12, 24):
        assert abs(scale[months] / size[months] - 1) < 0.10, months
