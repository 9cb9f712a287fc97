"""Measures of atlas.learn.evaluation (learned vs iterative template)."""

import numpy as np
import pandas as pd
import pytest

from atlas.learn.evaluation import centrality, method_summary, pairwise_dice, subject_measures


def test_subject_measures_of_an_identity_registration():
    rng = np.random.default_rng(0)
    template = rng.random((8, 9, 7))
    mask = np.ones(template.shape, bool)
    still = np.zeros((*template.shape, 3))
    m = subject_measures(template, template, template, still, np.array([2.0, 2.0, 2.0]), mask)
    assert m["ncc"] == m["ncc_unregistered"] == 1.0
    assert m["mean_displacement_mm"] == 0.0 and m["pct_nonpositive_jacobian"] == 0.0
    # The subject is the template: slope 1, sharpness in subject units = raw sharpness.
    assert m["template_sharpness_raw"] > 0
    assert m["template_sharpness"] == pytest.approx(m["template_sharpness_raw"])
    brighter = subject_measures(2 * template, template, template, still, [2.0] * 3, mask)
    assert brighter["template_sharpness_raw"] == pytest.approx(2 * m["template_sharpness_raw"])
    assert brighter["template_sharpness"] == pytest.approx(m["template_sharpness"])


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
            "template_sharpness_raw": [2.0, 4.0, 9.0],
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
        "sharpness_raw",
        "centrality_mm",
        "mean_displacement_mm",
        "pct_nonpositive_jacobian",
        "ncc_unregistered",
        "ncc",
        "seconds_per_subject",
    ]
    assert row["n_subjects"] == 2 and row["sharpness"] == 2.0 and row["centrality_mm"] == 0.25
    assert row["sharpness_raw"] == 3.0
    assert row["seconds_per_subject"] == 0.2


def test_intensity_slope_maps_an_atlas_into_subject_units():
    from scipy import ndimage

    from atlas import metrics
    from atlas.learn.evaluation import intensity_slope

    rng = np.random.default_rng(0)
    subject = ndimage.gaussian_filter(rng.random((40, 48)), 1.0)
    mask = np.ones(subject.shape, bool)
    mask[:4] = False
    # An affine intensity change of the atlas: slope 1 / 3, so slope x sharpness is unchanged.
    assert intensity_slope(3 * subject + 1, subject, mask) == pytest.approx(1 / 3)
    # The subject's smoothed version (its projection onto smooth images) keeps slope 1: the
    # normalisation does not reward blur. Exact when the residual is orthogonal to it.
    blurred = ndimage.gaussian_filter(subject, 2.0)
    b = blurred[mask] - blurred[mask].mean()
    r = subject[mask] - subject[mask].mean()
    target = subject.copy()
    target[mask] = blurred[mask] + (r - b) - ((r - b) @ b) / (b @ b) * b
    assert intensity_slope(blurred, target, mask) == pytest.approx(1.0)
    scaled = [
        intensity_slope(a * blurred + c, target, mask)
        * metrics.sharpness(a * blurred + c, 2.0, mask)
        for a, c in ((1, 0), (4, -1))
    ]
    assert scaled[0] == pytest.approx(scaled[1])
    assert np.isnan(intensity_slope(np.ones_like(subject), subject, mask))
