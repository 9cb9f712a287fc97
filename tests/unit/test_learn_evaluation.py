"""Measures of atlas.learn.evaluation (learned vs iterative template)."""

import numpy as np
import pandas as pd

from atlas.learn.evaluation import centrality, method_summary, pairwise_dice, subject_measures


def test_subject_measures_of_an_identity_registration():
    rng = np.random.default_rng(0)
    template = rng.random((8, 9, 7))
    mask = np.ones(template.shape, bool)
    still = np.zeros((*template.shape, 3))
    m = subject_measures(template, template, template, still, np.array([2.0, 2.0, 2.0]), mask)
    assert m["ncc"] == m["ncc_unregistered"] == 1.0
    assert m["mean_displacement_mm"] == 0.0 and m["pct_nonpositive_jacobian"] == 0.0
    assert m["template_sharpness"] > 0


def test_centrality_is_the_magnitude_of_the_mean_displacement():
    """Two opposite displacements are centred (0 mm); two equal ones are not."""
    u = np.zeros((4, 4, 4, 3))
    u[..., 0] = 3.0
    mask = np.ones((4, 4, 4), bool)
    assert centrality(iter([u, -u]), mask) == 0.0
    assert centrality([u, u], mask) == 3.0


def test_pairwise_dice():
    a = np.array([[1, 1], [2, 0]])
    assert pairwise_dice([a, a, a]) == 1.0
    assert np.isnan(pairwise_dice([a]))


def test_method_summary_averages_the_method_rows():
    subjects = pd.DataFrame(
        {
            "method": ["learned", "learned", "iterative"],
            "template_sharpness": [1.0, 3.0, 9.0],
            "mean_displacement_mm": [1.0, 2.0, 9.0],
            "pct_nonpositive_jacobian": [0.0, 0.0, 1.0],
            "ncc_unregistered": [0.5, 0.7, 0.1],
            "ncc": [0.9, 0.8, 0.2],
            "seconds": [0.1, 0.3, 20.0],
        }
    )
    row = method_summary(subjects, "learned", "xLearned", 0.25)
    assert list(row) == [
        "method",
        "template",
        "n_subjects",
        "sharpness",
        "centrality_mm",
        "mean_displacement_mm",
        "pct_nonpositive_jacobian",
        "ncc_unregistered",
        "ncc",
        "seconds_per_subject",
    ]
    assert row["n_subjects"] == 2 and row["sharpness"] == 2.0 and row["centrality_mm"] == 0.25
    assert row["seconds_per_subject"] == 0.2
