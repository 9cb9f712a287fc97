"""QC figures (matplotlib, Agg backend): mosaics, convergence curves, subject grids."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import save_figure  # noqa: E402


def _mid_slices(arr: np.ndarray) -> list[np.ndarray]:
    """Sagittal, coronal and axial mid slices of an RAS-ordered volume, for display."""
    x, y, z = (s // 2 for s in arr.shape)
    return [np.rot90(arr[x, :, :]), np.rot90(arr[:, y, :]), np.rot90(arr[:, :, z])]


def _show(ax, sl, title=None):
    vmax = np.percentile(sl, 99.5) if np.any(sl) else 1.0
    ax.imshow(sl, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def mosaic(volumes: list[np.ndarray], labels: list[str], path) -> None:
    """One row per volume (labelled), three orthogonal mid slices each; PNG at ``path``."""
    fig, axes = plt.subplots(len(volumes), 3, figsize=(7, 2.3 * len(volumes)), squeeze=False)
    for row, (vol, lab) in enumerate(zip(volumes, labels, strict=True)):
        for col, sl in enumerate(_mid_slices(vol)):
            _show(axes[row, col], sl, lab if col == 0 else None)
    save_figure(fig, path)


def subject_grid(volumes: list[np.ndarray], labels: list[str], path, ncols: int = 5) -> None:
    """Axial mid slice of each volume in a grid (subjects in template space)."""
    n = len(volumes)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, vol, lab in zip(axes.ravel(), volumes, labels, strict=False):
        _show(ax, _mid_slices(vol)[2], lab)
    save_figure(fig, path)


def convergence_plot(table: pd.DataFrame, path) -> None:
    """Convergence curves of the template table (one panel per measure) against iteration."""
    cols = ["mean_warp_mm", "template_change", "mean_ncc"]
    fig, axes = plt.subplots(1, len(cols), figsize=(11, 3))
    for ax, col in zip(axes, cols, strict=True):
        for stage, sub in table.groupby("stage", sort=False):
            ax.plot(sub.iteration, sub[col], "o-", label=stage)
        ax.set_xlabel("iteration")
        ax.set_title(col)
        ax.grid(alpha=0.3)
    axes[0].legend()
    save_figure(fig, path)
