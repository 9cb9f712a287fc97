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


def test_convergence_plot_draws_each_stage(tmp_path):
    table = pd.DataFrame(
        {
            "iteration": [0, 1, 2],
            "stage": ["affine", "syn", "syn"],
            "mean_warp_mm": [np.nan, 1.5, 0.7],
            "template_change": [0.2, 0.05, 0.01],
            "mean_ncc": [0.8, 0.9, 0.95],
        }
    )
    fig = qc.convergence_plot(table, tmp_path / "c.png")
    assert [ax.get_title() for ax in fig.axes] == ["mean_warp_mm", "template_change", "mean_ncc"]
    lines = fig.axes[1].get_lines()
    assert [ln.get_label() for ln in lines] == ["affine", "syn"]
    np.testing.assert_allclose(lines[1].get_ydata(), [0.05, 0.01])
    assert (tmp_path / "c.png").stat().st_size > 0
