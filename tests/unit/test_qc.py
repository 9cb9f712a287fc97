"""QC figures show what they claim: the right slices, rows, labels and curves."""

import matplotlib.image as mpimg
import numpy as np
import pandas as pd

from atlas import qc


def _volume(shape=(20, 24, 16), value=1.0):
    vol = np.zeros(shape, np.float32)
    vol[4:16, 5:19, 3:13] = value
    vol[10, 12, 8] = 2 * value  # a bright voxel off the slice centres
    return vol


def test_mosaic_rows_are_the_mid_slices(tmp_path):
    vols = [_volume(), np.zeros((20, 24, 16), np.float32)]
    fig = qc.mosaic(vols, ["iteration 0", "iteration 1"], tmp_path / "m.png")
    assert len(fig.axes) == 6
    shown = [ax.images[0].get_array() for ax in fig.axes]
    x, y, z = 10, 12, 8
    np.testing.assert_array_equal(shown[0], np.rot90(vols[0][x]))
    np.testing.assert_array_equal(shown[1], np.rot90(vols[0][:, y]))
    np.testing.assert_array_equal(shown[2], np.rot90(vols[0][:, :, z]))
    assert fig.axes[0].get_title() == "iteration 0" and fig.axes[3].get_title() == "iteration 1"
    png = mpimg.imread(tmp_path / "m.png")
    top, bottom = png[: png.shape[0] // 2], png[png.shape[0] // 2 :]
    # the first row shows a white box on black, the second an empty volume (black panels);
    # both halves share the white figure background
    bright = [(half[..., :3].min(-1) > 0.9).mean() for half in (top, bottom)]
    dark = [(half[..., :3].max(-1) < 0.1).mean() for half in (top, bottom)]
    assert bright[0] - bright[1] > 0.1
    assert dark[1] - dark[0] > 0.1


def test_subject_grid_has_one_labelled_panel_per_subject(tmp_path):
    vols = [_volume(value=v) for v in (1.0, 2.0, 3.0)]
    fig = qc.subject_grid(vols, ["sub-a", "sub-b", "sub-c"], tmp_path / "g.png", ncols=2)
    titled = [ax.get_title() for ax in fig.axes if ax.images]
    assert titled == ["sub-a", "sub-b", "sub-c"]
    assert len(fig.axes) == 4  # 2 x 2 grid, the last panel empty
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), np.rot90(vols[2][:, :, 8]))


def _convergence_table():
    """Demo/IXI-like values: 0.3 after the first affine iteration, then 1e-3 .. 3e-5."""
    return pd.DataFrame(
        {
            "iteration": [0, 1, 2, 3, 4],
            "stage": ["affine", "affine", "syn", "syn", "syn"],
            "mean_warp_mm": [np.nan, np.nan, 0.159, 0.181, 0.195],
            "template_change": [0.3, 2e-3, 1e-3, 1.5e-4, 3e-5],
            "mean_ncc": [0.8, 0.9, 0.95, 0.96, 0.96],
        }
    )


def test_convergence_plot_draws_each_stage(tmp_path):
    table = _convergence_table()
    fig = qc.convergence_plot(table, tmp_path / "c.png")
    assert [ax.get_title() for ax in fig.axes] == ["mean_warp_mm", "template_change", "mean_ncc"]
    lines = fig.axes[1].get_lines()
    assert [ln.get_label() for ln in lines] == ["affine", "syn"]
    np.testing.assert_allclose(lines[1].get_ydata(), [1e-3, 1.5e-4, 3e-5])
    assert fig.axes[0].get_ylabel() == "mean |mean warp| (mm)"
    assert fig.get_suptitle() == ""  # no criterion given: no verdict
    assert (tmp_path / "c.png").stat().st_size > 0


def test_convergence_plot_axes_a_reader_can_judge(tmp_path):
    """Integer iteration ticks on every panel; template change (0.3 .. 3e-5) on a log axis
    so the first iteration does not flatten the others; the others linear."""
    from atlas.template.convergence import evaluate_convergence

    table = _convergence_table()
    verdict = evaluate_convergence(table, {"max_template_change": 1e-3, "iterations": 2})
    fig = qc.convergence_plot(table, tmp_path / "c.png", verdict)
    assert [ax.get_yscale() for ax in fig.axes[:3]] == ["linear", "log", "linear"]
    for ax in fig.axes[:3]:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert set(range(5)) <= set(int(t) for t in ticks)
    # the log axis shows every decade from 3e-5 to 0.3
    low, high = fig.axes[1].get_ylim()
    assert low <= 3e-5 and high >= 0.3
    # the threshold is drawn on the template-change panel and the verdict is the title
    threshold = [ln for ln in fig.axes[1].get_lines() if ln.get_label().startswith("criterion")]
    assert len(threshold) == 1 and set(threshold[0].get_ydata()) == {1e-3}
    assert fig.get_suptitle() == (
        "convergence criterion met: template change < 0.001 in the last 2 SyN iterations"
    )
    failed = evaluate_convergence(table.iloc[:3], {"max_template_change": 1e-3, "iterations": 2})
    fig = qc.convergence_plot(table.iloc[:3], tmp_path / "c2.png", failed)
    assert fig.get_suptitle().startswith("convergence criterion NOT met")


def test_convergence_plot_log_axis_skips_zero_change(tmp_path):
    """A template change of exactly 0 (identical templates) cannot sit on a log axis: it is
    left out rather than breaking the figure."""
    table = _convergence_table().assign(template_change=[0.3, 0.0, 1e-3, 1e-4, 1e-5])
    fig = qc.convergence_plot(table, tmp_path / "c.png")
    affine = fig.axes[1].get_lines()[0].get_ydata()
    assert affine[0] == 0.3 and np.isnan(affine[1])
