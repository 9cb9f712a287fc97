"""QC figures (matplotlib, Agg backend): every figure of the workflow lives here.

Mosaics are drawn with plain matplotlib rather than nilearn's ``plot_anat`` or
``ants.plot_ortho``: measured on six 2 mm MNI152 volumes (one mosaic), 0.56 s here vs
6.2 s for nilearn (one ortho display per row) and 9.6 s for ``ants.plot_ortho`` (which also
writes one file per volume, with no labelled multi-row layout). The per-image
registration view (:func:`registration_overlay`) does use nilearn: edges of the template
over the image, as sMRIPrep's reportlets draw them.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def mosaic(volumes: list[np.ndarray], labels: list[str], path):
    """One row per volume (labelled), three orthogonal mid slices each; PNG at ``path``.

    ``volumes``: ``(X, Y, Z)`` arrays in RAS voxel order. Returns the (closed) figure.
    """
    fig, axes = plt.subplots(len(volumes), 3, figsize=(7, 2.3 * len(volumes)), squeeze=False)
    for row, (vol, lab) in enumerate(zip(volumes, labels, strict=True)):
        for col, sl in enumerate(_mid_slices(vol)):
            _show(axes[row, col], sl, lab if col == 0 else None)
    save_figure(fig, path)
    return fig


def subject_grid(volumes: Iterable[np.ndarray], labels: list[str], path, ncols: int = 5):
    """Axial mid slice of each ``(X, Y, Z)`` volume in a grid of ``ncols`` columns
    (subjects in template space, one panel per label; ``volumes`` may be a generator, drawn
    one at a time); PNG at ``path``. Returns the (closed) figure."""
    n = len(labels)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, vol, lab in zip(axes.ravel(), volumes, labels, strict=False):
        _show(ax, _mid_slices(vol)[2], lab)
    save_figure(fig, path)
    return fig


#: Panels of :func:`convergence_plot`: column, y label, y scale. Template change spans
#: decades (0.3 after the first affine iteration, 1e-3 to 3e-5 in the SyN iterations), so
#: it is drawn on a log axis; the others stay linear.
CONVERGENCE_PANELS = [
    ("mean_warp_mm", "mean |mean warp| (mm)", "linear"),
    ("template_change", "1 - NCC(new, previous template)", "log"),
    ("mean_ncc", "mean NCC subject vs template", "linear"),
]


def convergence_plot(table: pd.DataFrame, path, convergence: dict | None = None):
    """Convergence curves of the template's convergence table; PNG at ``path``.

    Parameters
    ----------
    table : one row per iteration, columns ``iteration`` (int), ``stage``
        (``affine``/``syn``), ``mean_warp_mm`` (mm; NaN for affine iterations),
        ``template_change`` (1 - NCC, dimensionless) and ``mean_ncc``.
    path : PNG file written atomically (:func:`atlas.io.save_figure`).
    convergence : the result of :func:`atlas.template.convergence.evaluate_convergence`,
        or None: its threshold is drawn on the template-change panel (dashed line) and
        its verdict is the figure's title.

    One panel per measure (:data:`CONVERGENCE_PANELS`, titled with the column name), one
    line per stage, integer iteration ticks shared by the panels; template change on a log axis
    (non-positive values, which a log axis cannot show, are left out).

    Returns
    -------
    The (closed) matplotlib Figure.
    """
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(CONVERGENCE_PANELS), figsize=(11, 3.4), sharex=True)
    for ax, (col, ylabel, scale) in zip(axes, CONVERGENCE_PANELS, strict=True):
        for stage, sub in table.groupby("stage", sort=False):
            y = sub[col].to_numpy(dtype=float)
            if scale == "log":
                y = np.where(y > 0, y, np.nan)
            ax.plot(sub.iteration.to_numpy(), y, "o-", label=stage)
        ax.set_yscale(scale)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="iteration", ylabel=ylabel, title=col)
        ax.grid(alpha=0.3, which="both" if scale == "log" else "major")
    if convergence is not None:
        crit = convergence["criterion"]
        ax = axes[[c for c, _, _ in CONVERGENCE_PANELS].index(crit["measure"])]
        ax.axhline(
            crit["max_template_change"],
            color="k",
            ls="--",
            lw=1,
            label=f"criterion ({crit['max_template_change']:g})",
        )
        ax.legend(fontsize=7)
        verdict = "met" if convergence["met"] else "NOT met"
        fig.suptitle(
            f"convergence criterion {verdict}: template change < "
            f"{crit['max_template_change']:g} in the last {crit['iterations']} SyN iterations",
            fontsize=9,
        )
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def plot_volumes_vs_age(
    volumes: pd.DataFrame, ages: dict[str, float], structures: list[str]
) -> plt.Figure:
    """Scatter of selected structure volumes (mm^3) against age (years), one panel each.

    Parameters
    ----------
    volumes : tidy table of :func:`atlas.segmentation.volumes.structure_volumes` rows
        (several subjects concatenated; columns ``subject``, ``name``, ``volume_mm3``).
    ages : subject -> age in years (any mapping).
    structures : names from the ``name`` column to plot.

    Returns
    -------
    matplotlib Figure (Agg backend); save it with :func:`atlas.io.save_figure`.
    """
    fig, axes = plt.subplots(1, len(structures), figsize=(3.2 * len(structures), 3), squeeze=False)
    for ax, structure in zip(axes[0], structures, strict=True):
        rows = volumes[volumes["name"] == structure]
        ax.scatter([ages[s] for s in rows["subject"]], rows["volume_mm3"], s=12)
        ax.set(title=structure, xlabel="age (years)", ylabel="volume (mm$^3$)")
    fig.tight_layout()
    return fig


def plot_evaluation(
    scores: pd.DataFrame, *, metric: str = "dice", by: str = "method"
) -> plt.Figure:
    """Box plot of a per-structure metric (e.g. ``dice`` or ``hd95_mm``), one box per ``by``
    group (e.g. fusion method or subject), in order of appearance. Non-finite values (HD95 of
    missed labels) are left out. Returns a matplotlib Figure (Agg backend)."""
    groups = [(name, g[metric].to_numpy(dtype=float)) for name, g in scores.groupby(by, sort=False)]
    fig, ax = plt.subplots(figsize=(max(3.0, 1.0 + 0.8 * len(groups)), 3.5))
    ax.boxplot([v[np.isfinite(v)] for _, v in groups])
    ax.set_xticks(range(1, len(groups) + 1), [str(name) for name, _ in groups], rotation=30)
    ax.set(xlabel=by, ylabel=metric)
    fig.tight_layout()
    return fig


def plot_losses(history: list[dict]) -> plt.Figure:
    """Training losses per optimiser step, one panel per loss term (grey: every step; line:
    moving average over ~1/50 of the steps); ``history`` holds one dict of losses per step.
    Returns a matplotlib Figure (Agg backend); save it with :func:`atlas.io.save_figure`."""
    keys = list(history[0]) if history else []
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 1.8 * len(keys) + 0.5), sharex=True)
    axes = np.atleast_1d(axes)
    steps = np.arange(1, len(history) + 1)
    width = max(1, len(history) // 50)
    for ax, key in zip(axes, keys, strict=True):
        values = np.array([h[key] for h in history])
        ax.plot(steps, values, color="0.8", lw=0.5)
        ax.plot(steps[width - 1 :], np.convolve(values, np.ones(width) / width, "valid"))
        ax.set_ylabel(key)
    axes[-1].set_xlabel(f"step (line: moving average over {width} steps)")
    fig.tight_layout()
    return fig


def plot_age_montage(
    slices: list[np.ndarray], ages, vmax: float | None = None, unit: str = "y"
) -> plt.Figure:
    """One row of 2D slices (first array axis = x, left to right; second = up), titled with
    their ages and ``unit`` (``y`` years, ``mo`` months); grey scale from 0 to ``vmax``
    (default: the 99.5th percentile of the slices). Returns a matplotlib Figure (Agg
    backend)."""
    vmax = float(np.percentile(np.stack(slices), 99.5)) if vmax is None else vmax
    fig, axes = plt.subplots(1, len(slices), figsize=(2.2 * len(slices), 2.8), squeeze=False)
    for ax, sl, age in zip(axes[0], slices, ages, strict=True):
        ax.imshow(sl.T, cmap="gray", vmin=0, vmax=vmax, origin="lower")
        ax.set_title(f"{age:g} {unit}")
        ax.axis("off")
    fig.tight_layout()
    return fig


def _cut_coords(img, n_cuts: int) -> dict[str, list[float]]:
    """World coordinates (mm) of ``n_cuts`` evenly spaced cuts per axis (``x``, ``y``,
    ``z``) through the foreground of ``img`` (voxels above 5 % of its 99th percentile),
    from 15 % to 85 % of the foreground extent along each axis."""
    from nibabel.affines import apply_affine

    data = np.asanyarray(img.dataobj, dtype=np.float32)
    positive = data[data > 0]
    level = 0.05 * np.percentile(positive, 99) if positive.size else 0.0
    ijk = np.argwhere(data > level)
    if not len(ijk):
        ijk = np.argwhere(np.ones(data.shape[:3], bool))
    xyz = apply_affine(img.affine, ijk)
    q = np.linspace(0.15, 0.85, n_cuts)
    return {axis: [float(v) for v in np.quantile(xyz[:, a], q)] for a, axis in enumerate("xyz")}


def _nifti(img):
    """A nibabel image from a path or a nibabel image."""
    import nibabel as nib

    return img if hasattr(img, "affine") else nib.load(str(img))


def _ortho_rows(plot, cuts: dict, title: str | None, **kwargs):
    """Reportlet layout: one row per direction (sagittal, coronal, axial) drawn by the
    nilearn function ``plot`` at ``cuts[axis]`` (world mm) with ``kwargs``; the title goes
    over the first row. Returns the figure and the three nilearn displays."""
    fig = plt.figure(figsize=(12, 6.6), facecolor="k")
    displays = [
        plot(
            display_mode=axis,
            cut_coords=cuts[axis],
            figure=fig,
            axes=(0.0, 1.0 - (row + 1) / 3, 1.0, 1 / 3),
            title=title if row == 0 else None,
            draw_cross=False,
            black_bg=True,
            dim=0,
            colorbar=False,
            **kwargs,
        )
        for row, axis in enumerate("xyz")
    ]
    return fig, displays


def registration_overlay(image, template, path, title: str | None = None, n_cuts: int = 6):
    """Registration reportlet of one image (as sMRIPrep's): the image resampled into
    template space, drawn with :func:`nilearn.plotting.plot_anat`, with the edges of the
    template drawn over it (``display.add_edges``, red); one row of ``n_cuts`` slices per
    direction (sagittal, coronal, axial) through the template foreground. PNG at ``path``.

    Parameters
    ----------
    image, template : NIfTI file paths or nibabel images on the same grid (the image in
        template space and the template).
    path : PNG file written atomically (:func:`atlas.io.save_figure`).
    title : text over the first row (e.g. the image id).

    Returns
    -------
    The (closed) matplotlib Figure.
    """
    from nilearn import plotting

    image, template = _nifti(image), _nifti(template)
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    vmax = float(np.percentile(data[data > 0], 99.5)) if np.any(data > 0) else 1.0

    cuts = _cut_coords(template, n_cuts)
    fig, displays = _ortho_rows(plotting.plot_anat, cuts, title, anat_img=image, vmin=0, vmax=vmax)
    for display in displays:
        display.add_edges(template, color="r")
    save_figure(fig, path)
    return fig


def segmentation_overlay(image, dseg, path, title: str | None = None, n_cuts: int = 6):
    """Segmentation reportlet of one image: its label map (``dseg``) drawn in colour over
    the image (:func:`nilearn.plotting.plot_roi`, 45 % opaque), one row of ``n_cuts``
    slices per direction (sagittal, coronal, axial) through the labelled region. PNG at
    ``path``.

    Parameters
    ----------
    image, dseg : NIfTI file paths or nibabel images on the same grid (the preprocessed
        image and its fused label map, integer labels, 0 = background).
    path : PNG file written atomically (:func:`atlas.io.save_figure`).
    title : text over the first row (e.g. the image id).

    Returns
    -------
    The (closed) matplotlib Figure.
    """
    import nibabel as nib
    from nilearn import plotting

    image, dseg = _nifti(image), _nifti(dseg)
    labels = nib.Nifti1Image(np.asanyarray(dseg.dataobj).astype(np.int32), dseg.affine)

    cuts = _cut_coords(labels, n_cuts)
    kwargs = {"roi_img": labels, "bg_img": image, "alpha": 0.45, "cmap": "gist_ncar"}
    fig, _ = _ortho_rows(plotting.plot_roi, cuts, title, **kwargs)
    save_figure(fig, path)
    return fig


def plot_trajectories(
    volumes: pd.DataFrame, model: pd.DataFrame, names, path, time_unit: str = "years"
):
    """Spaghetti plot of the longitudinal stage: volume (mm^3) against age, one panel per
    structure of ``names``, one line per subject joining its sessions, and the cohort fit of
    the mixed model (``model``: rows of :func:`atlas.longitudinal.models.fit_structures`;
    intercept at ``centre_age`` and age slope) as a thick line where it was fitted.

    ``volumes``: tidy rows ``subject``, ``age``, ``name``, ``volume_mm3``. PNG at ``path``.
    """
    names = [n for n in names if (volumes.name == n).any()]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4 * max(len(names), 1), 3.2))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names, strict=False):
        d = volumes[volumes.name == name]
        for _, g in d.groupby("subject"):
            ax.plot(g.age, g.volume_mm3, "-o", ms=3, lw=1, alpha=0.7)
        fit = model[(model.name == name) & model.estimate.notna()].set_index("term")
        if {"intercept", "age"} <= set(fit.index):
            ages = np.linspace(d.age.min(), d.age.max(), 20)
            c = fit.loc["age", "centre_age"]
            b0, b1 = fit.loc["intercept", "estimate"], fit.loc["age", "estimate"]
            ax.plot(ages, b0 + b1 * (ages - c), "k-", lw=2.5, label="mixed model")
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"age ({time_unit})")
        ax.set_ylabel("volume (mm$^3$)")
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def log_jacobian_map(log_jac: np.ndarray, template: np.ndarray, path, vmax: float | None = None):
    """Mean log-Jacobian change map of the cohort in template space: three orthogonal mid
    slices of ``log_jac`` (``(X, Y, Z)``, RAS voxel order; > 0 = expansion) in a diverging
    colour map over the ``template`` (same shape) in grey, shown where the template is above
    10 % of its maximum (the brain). PNG at ``path``."""
    vmax = vmax or float(np.nanpercentile(np.abs(log_jac), 99)) or 1e-3
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, bg, sl in zip(axes, _mid_slices(template), _mid_slices(log_jac), strict=True):
        _show(ax, bg)
        im = ax.imshow(
            np.ma.masked_where(bg <= 0.1 * template.max(), sl),
            cmap="RdBu_r",
            vmin=-vmax,
            vmax=vmax,
            alpha=0.6,
            interpolation="nearest",
        )
    fig.colorbar(im, ax=list(axes), fraction=0.02, label="mean log-Jacobian (last - first)")
    save_figure(fig, path)
    return fig


def plot_age_tissue_montage(
    slices: list[np.ndarray],
    tissue_rows: list[list[np.ndarray]],
    tissue_names,
    ages,
    vmax: float | None = None,
    unit: str = "y",
) -> plt.Figure:
    """Learned 4D atlas with tissue maps: one column per age (in ``unit``), the intensity slices
    (as in :func:`plot_age_montage`) in the first row and one row of probability slices in
    [0, 1] per tissue (``tissue_rows[k]``, named ``tissue_names[k]``) below, so intensity
    and tissue maps of an age sit side by side. Returns a matplotlib Figure."""
    vmax = float(np.percentile(np.stack(slices), 99.5)) if vmax is None else vmax
    rows = [("T1w", slices, "gray", vmax)]
    rows += [(n, r, "magma", 1.0) for n, r in zip(tissue_names, tissue_rows, strict=True)]
    fig, axes = plt.subplots(
        len(rows), len(slices), figsize=(2.2 * len(slices), 2.4 * len(rows)), squeeze=False
    )
    for r, (name, row, cmap, top) in enumerate(rows):
        for c, (ax, sl) in enumerate(zip(axes[r], row, strict=True)):
            ax.imshow(sl.T, cmap=cmap, vmin=0, vmax=top, origin="lower")
            ax.set_title(f"{ages[c]:g} {unit}" if r == 0 else "")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(name if c == 0 else "")
    fig.tight_layout()
    return fig
