"""Every registration backend (atlas.registration.BACKENDS) on the same small synthetic
problems: a known affine and a known smooth deformation are recovered, forward and inverse
transforms compose to the identity, warped label maps keep their ids, runs are repeatable.

Maps are measured the way the workflow uses the files: images of world coordinates are
resampled through the written transform lists with ``ants.apply_transforms`` (exact for a
linear function up to float32 rounding), so file formats and LPS/RAS conventions are checked
too (a sign error in the .mat or warp components moves points by centimetres).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import ants
import numpy as np
import pytest
from scipy.ndimage import binary_erosion, gaussian_filter

from atlas.registration import (
    BACKENDS,
    FLIP,
    backend,
    check_stage,
    read_affine_ras,
    set_determinism,
)

#: fireants is installed apart (``pip install --no-deps``, README "Registration backends":
#: its wheel pins SimpleITK 2.2.1): its cases skip where it is missing, except under CI
#: (env ``CI``, whose .ci/run installs it), where they fail
SKIP_FIREANTS = pytest.mark.skipif(
    importlib.util.find_spec("fireants") is None and not os.environ.get("CI"),
    reason="fireants not installed",
)
#: every backend
NAMES = [
    pytest.param(name, marks=SKIP_FIREANTS if name == "fireants" else ())
    for name in sorted(BACKENDS)
]

N, SPACING = 48, 2.0  # 48^3 voxels at 2 mm: a registration takes 0.5-4 s per backend
#: ANTs keys: a 3-level affine schedule for 48^3 (the config's shrink 6 leaves 8^3 voxels)
#: and mean squares (both images share intensities; Mattes MI on a random 20 % of this small
#: phantom missed the affine in 1 of ~5 runs). Greedy ignores them and reads its own block.
AFFINE = {
    "transform": "Affine",
    "affine_metric": "meansquares",
    "affine_iterations": [200, 100, 50],
    "affine_shrink_factors": [4, 2, 1],
    "affine_smoothing_sigmas": [2, 1, 0],
    # both engines end at full resolution here (the config's Greedy affine stops at 4 mm:
    # in the template the deformable stage refines it)
    "greedy": {"iterations": [60, 40, 20], "affine_iterations": [100, 50, 10]},
    # FireANTs (torch on one CPU thread, ~30 ms an iteration at 48^3): mean squares as ANTs,
    # and short schedules to keep its tests near 30 s of CPU
    "fireants": {
        "affine_metric": "mse",
        "affine_iterations": [100, 50, 25],
        "iterations": [100, 50, 25],
    },
}
SYN = dict(AFFINE, transform="SyN")


def _phantom(seed=0, n=N, spacing=SPACING):
    """A head-like ellipsoid (0.6) with 25 smooth blobs of either sign inside, 2 mm grid
    centred on the origin, and its label map (ids 0, 3, 7, 42 by intensity band)."""
    rng = np.random.default_rng(seed)
    grid = np.indices((n, n, n)).transpose(1, 2, 3, 0).astype(float)
    centre, radii = np.full(3, n / 2), np.array([0.36, 0.30, 0.28]) * n
    inside = (((grid - centre) / radii) ** 2).sum(-1) < 1
    x = 0.6 * inside
    for _ in range(25):
        c, r = centre + rng.uniform(-0.7, 0.7, 3) * radii, rng.uniform(1.5, 4.0)
        blob = np.exp(-((grid - c) ** 2).sum(-1) / (2 * r * r))
        x = x + rng.uniform(-0.5, 0.8) * blob * inside
    x = gaussian_filter(x, 0.7)
    labels = np.select([x > 0.9, x > 0.55, x > 0.2], [42, 7, 3], 0).astype("float32")
    origin = (-(n - 1) * spacing / 2,) * 3
    make = lambda a: ants.from_numpy(a.astype("float32"), origin=origin, spacing=(spacing,) * 3)  # noqa: E731
    return make(x), make(labels), inside


def _coords(image):
    """Three images holding the LPS world coordinate (mm) of each voxel of ``image``."""
    idx = np.indices(image.shape).reshape(3, -1)
    world = np.asarray(image.origin)[:, None] + np.asarray(image.spacing)[:, None] * idx
    return [image.new_image_like(c.reshape(image.shape).astype("float32")) for c in world]


def _map(fixed, moving, transforms, whichtoinvert=None):
    """World points (LPS, ``(X, Y, Z, 3)``) of ``moving`` that the fixed voxels map to."""
    out = [
        ants.apply_transforms(fixed, c, transforms, whichtoinvert=whichtoinvert).numpy()
        for c in _coords(moving)
    ]
    return np.stack(out, -1)


def _smooth_field(image, amplitude_mm=6.0, seed=1):
    """A smooth displacement (LPS mm, ``(X, Y, Z, 3)``): Gaussian-smoothed noise (sigma 4
    voxels) scaled to ``amplitude_mm`` at its largest, written as an ANTs vector image."""
    rng = np.random.default_rng(seed)
    u = np.stack([gaussian_filter(rng.standard_normal(image.shape), 4.0) for _ in range(3)], -1)
    u *= amplitude_mm / np.abs(u).max()
    field = ants.from_numpy(
        u.astype("float32"), origin=image.origin, spacing=image.spacing, has_components=True
    )
    return u, field


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One ITK thread before this module's first registration: ITK fixes its thread count on
    first use in a process, and later tests rely on reproducible one-thread ANTs runs."""
    set_determinism(seed=1, threads=1)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Fixed = the phantom deformed by a known smooth field u; moving = the phantom, so the
    true fixed->moving map is ``x + u(x)``."""
    tmp = tmp_path_factory.mktemp("backends")
    image, labels, inside = _phantom()
    u, field = _smooth_field(image)
    ants.image_write(field, str(tmp / "true_warp.nii.gz"))
    fixed = ants.apply_transforms(image, image, [str(tmp / "true_warp.nii.gz")])
    fixed_labels = ants.apply_transforms(
        image, labels, [str(tmp / "true_warp.nii.gz")], interpolator="nearestNeighbor"
    )
    mask = binary_erosion(inside, iterations=3)
    return dict(
        tmp=tmp, image=image, labels=labels, fixed=fixed, fixed_labels=fixed_labels, u=u, mask=mask
    )


@pytest.fixture(scope="module", params=NAMES)
def syn(request, problem):
    """One affine + deformable registration per backend, shared by the tests below."""
    out = problem["tmp"] / request.param
    out.mkdir()
    paths = [out / "affine.mat", out / "warp.nii.gz", out / "inverse-warp.nii.gz"]
    backend(request.param).register(problem["fixed"], problem["image"], SYN, *paths)
    return request.param, paths


@pytest.mark.parametrize("name", NAMES)
def test_known_affine_is_recovered(name, tmp_path):
    """An 8 degree rotation, 5 % scalings and a (3, -2, 4) mm shift: the written .mat maps
    points within 1 mm (half a voxel) of the truth over a 40 mm radius. Measured: Greedy
    (dense NCC) 0.37 mm, ANTs 0.7 mm (Mattes MI on a random 20 % of a ~1.5e4-voxel head),
    FireANTs 0.2 mm (dense mean squares)."""
    image, _, _ = _phantom()
    angle = np.deg2rad(8.0)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    matrix = rot @ np.diag([1.05, 0.95, 1.0])
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=matrix, offset=[3.0, -2.0, 4.0]
    )
    ants.write_transform(ants.invert_ants_transform(tx), str(tmp_path / "inverse.mat"))
    moving = ants.apply_transforms(image, image, [str(tmp_path / "inverse.mat")])
    backend(name).register(image, moving, AFFINE, tmp_path / "a.mat")
    truth = np.eye(4)
    truth[:3, :3], truth[:3, 3] = matrix, [3.0, -2.0, 4.0]
    truth = FLIP @ truth @ FLIP  # LPS -> RAS, as read_affine_ras returns
    points = np.array([[40.0, 0, 0, 1], [0, -40, 0, 1], [0, 0, 40, 1], [25, 25, -25, 1]]).T
    error = np.linalg.norm(((read_affine_ras(tmp_path / "a.mat") - truth) @ points)[:3], axis=0)
    assert error.max() < 1.0, error


def test_known_deformation_is_recovered(syn, problem):
    """The written chain [warp, affine] maps fixed points to within 0.6 |u| on average and
    1.5 mm at the 95th percentile of ``x + u(x)`` inside the eroded head, for a field of up
    to 6 mm (mean |u| 1.2 mm there, so mean error < 0.73 mm = 0.36 voxel). Measured mean
    errors 0.51 (Greedy), 0.51-0.54 mm (ANTs) and 0.30 mm (FireANTs, 95th percentile 0.68
    mm): the residual is what their smoothing of the
    update and total fields leaves on a blob phantom with flat regions, where no metric
    sees the displacement; a sign or axis error in the files gives > 1.2 mm."""
    name, (affine, warp, _) = syn
    mapped = _map(problem["fixed"], problem["image"], [str(warp), str(affine)])
    world = np.stack([c.numpy() for c in _coords(problem["fixed"])], -1)
    truth = world + problem["u"]
    m = problem["mask"]
    error = np.linalg.norm(mapped - truth, axis=-1)[m]
    before = np.linalg.norm(problem["u"], axis=-1)[m]
    assert error.mean() < 0.6 * before.mean(), (name, error.mean(), before.mean())
    assert np.percentile(error, 95) < 1.5, (name, np.percentile(error, 95))


def test_forward_and_inverse_compose_to_identity(syn, problem):
    """Fixed -> moving -> fixed through the written forward and inverse chains returns each
    point inside the eroded head to within 0.3 mm on average (0.15 voxel) and 1 mm at the
    99th percentile: the engines invert their fields numerically (ANTs SyN's symmetric
    inverse; Greedy's and FireANTs' fields by ITK's fixed-point inversion: FireANTs measured
    0.03 mm mean, 0.08 mm 99th percentile), and linear interpolation of the coordinate
    images adds little on a field this smooth."""
    name, (affine, warp, inverse) = syn
    fixed, moving = problem["fixed"], problem["image"]
    # inverse chain resamples fixed-space coordinates onto the moving grid ...
    back = [
        ants.apply_transforms(moving, c, [str(affine), str(inverse)], whichtoinvert=[True, False])
        for c in _coords(fixed)
    ]
    # ... and the forward chain brings them back onto the fixed grid
    there_and_back = np.stack(
        [ants.apply_transforms(fixed, b, [str(warp), str(affine)]).numpy() for b in back], -1
    )
    world = np.stack([c.numpy() for c in _coords(fixed)], -1)
    error = np.linalg.norm(there_and_back - world, axis=-1)[problem["mask"]]
    assert error.mean() < 0.3, (name, error.mean())
    assert np.percentile(error, 99) < 1.0, (name, np.percentile(error, 99))


def test_warped_labels_keep_their_ids(syn, problem):
    """Nearest-neighbour label warping through the chain gives only the atlas ids, all of
    them, and each label of more than 100 voxels overlaps the truth with Dice > 0.8."""
    name, (affine, warp, _) = syn
    warped = ants.apply_transforms(
        problem["fixed"],
        problem["labels"],
        [str(warp), str(affine)],
        interpolator="nearestNeighbor",
    ).numpy()
    truth = problem["fixed_labels"].numpy()
    assert set(np.unique(warped)) == set(np.unique(problem["labels"].numpy())) == {0, 3, 7, 42}
    for label in (3, 7, 42):
        a, b = warped == label, truth == label
        if b.sum() > 100:
            dice = 2 * (a & b).sum() / (a.sum() + b.sum())
            assert dice > 0.8, (name, label, dice)


def _deformed(image, out):
    """``image`` deformed by :func:`_smooth_field` (written as ``out/true_warp.nii.gz``)."""
    _, field = _smooth_field(image)
    ants.image_write(field, f"{out}/true_warp.nii.gz")
    return ants.apply_transforms(image, image, [f"{out}/true_warp.nii.gz"])


def determinism_run(name, out):
    """Two registrations of the phantom problem in this process (seed 7, one thread), their
    transforms written under ``out`` (run by the test below in a fresh interpreter)."""
    set_determinism(7, 1)  # what each workflow job does before ANTs loads
    # half the grid: ANTs runs on one thread here (FireANTs' deformable stage needs 32 a side)
    image, _, _ = _phantom(n=32, spacing=3.0) if name == "fireants" else _phantom(n=24, spacing=4.0)
    fixed = _deformed(image, out)
    for run in ("a", "b"):
        paths = [f"{out}/{run}.mat", f"{out}/{run}_w.nii.gz", f"{out}/{run}_i.nii.gz"]
        backend(name).register(fixed, image, SYN, *paths)


@pytest.mark.parametrize("name", NAMES)
def test_same_inputs_same_output(name, tmp_path):
    """Two runs with the same inputs, seed and thread count write identical transforms.
    Run in a fresh interpreter, as a workflow job: ITK reads its thread count once per
    process, and ANTs' multi-threaded metric sums are only reproducible for a fixed count.
    FireANTs on CPU (torch, one thread, no random sampling) is bit-identical too; on CUDA
    its ``grid_sample`` backward accumulates with atomics and is not."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import test_registration_backends as t; t.determinism_run({name!r}, {str(tmp_path)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    a, b = (read_affine_ras(tmp_path / f"{r}.mat") for r in "ab")
    np.testing.assert_array_equal(a, b)
    wa, wb = (ants.image_read(str(tmp_path / f"{r}_w.nii.gz")).numpy() for r in "ab")
    np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("name", NAMES)
def test_initial_transform_is_the_starting_point(name, tmp_path):
    """Started from the true affine (a 10 degree rotation and 6 mm shift, an ANTs .mat),
    5 iterations at full resolution stay at it: the written affine maps points within
    0.5 mm of it over a 40 mm radius. Ignoring the start (centre-of-mass alignment) leaves
    most of the rotation (~7 mm at that radius): measured 4.4 mm (Greedy), 7.1 mm (ANTs),
    7.4 mm (FireANTs; 0.15 mm from the start)."""
    image, _, _ = _phantom(n=32, spacing=3.0)
    angle = np.deg2rad(10.0)
    rot = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=np.array(rot), offset=[6.0, 0, 0]
    )
    ants.write_transform(tx, str(tmp_path / "init.mat"))
    ants.write_transform(ants.invert_ants_transform(tx), str(tmp_path / "inverse.mat"))
    moving = ants.apply_transforms(image, image, [str(tmp_path / "inverse.mat")])
    params = dict(AFFINE, affine_iterations=[5], affine_shrink_factors=[1])
    params |= {"affine_smoothing_sigmas": [0], "greedy": {"affine_iterations": [5]}}
    params["fireants"] = {"affine_iterations": [5], "scales": [1], "affine_metric": "mse"}
    backend(name).register(
        image, moving, params, tmp_path / "a.mat", initial_transform=tmp_path / "init.mat"
    )
    points = np.array([[40.0, 0, 0, 1], [0, -40, 0, 1], [0, 0, 40, 1]]).T
    diff = (read_affine_ras(tmp_path / "a.mat") - read_affine_ras(tmp_path / "init.mat")) @ points
    assert np.linalg.norm(diff[:3], axis=0).max() < 0.5


def test_syn_without_inverse_writes_no_inverse(syn, problem, tmp_path):
    """The template's SyN iterations before the last ask for no inverse warp: the same
    registration then writes only the affine and the forward warp, and the forward warp is
    the one written with the inverse (same inputs, seed and threads)."""
    name, (_, warp, _) = syn
    paths = [tmp_path / "affine.mat", tmp_path / "warp.nii.gz"]
    backend(name).register(problem["fixed"], problem["image"], SYN, *paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["affine.mat", "warp.nii.gz"]
    np.testing.assert_allclose(
        ants.image_read(str(paths[1])).numpy(), ants.image_read(str(warp)).numpy(), atol=1e-4
    )


def test_check_stage_names_missing_and_stray_outputs():
    assert check_stage({"transform": "SyN"}, "w.nii.gz", None) == "SyN"
    with pytest.raises(ValueError, match="needs warp_out"):
        check_stage({"transform": "SyN"}, None, "i.nii.gz")
    with pytest.raises(ValueError, match="writes no warp"):
        check_stage({"transform": "Affine"}, "w.nii.gz", None)
    with pytest.raises(ValueError, match="unknown transform"):
        check_stage({"transform": "BSpline"}, None, None)


@SKIP_FIREANTS
def test_fireants_job_never_loads_ants_and_its_resampling_matches_the_files(tmp_path):
    """registration.register_to_template with backend fireants, as a workflow job (fresh
    interpreter): ANTs stays unloaded, and the warped image FireANTs resampled in memory is
    within 0.5 % of the intensity range of ``ants.apply_transforms`` of the written files
    (both trilinear, 0 outside), so the files are the map FireANTs optimised. The segmentation
    block reaches its ``register_preset`` through ``preset_kwargs``."""
    from atlas.registration import preset_kwargs, register_preset

    image, labels, _ = _phantom(n=32, spacing=3.0)
    fixed = _deformed(image, tmp_path)
    for name, img in (("template", fixed), ("image", image)):
        ants.image_write(img, str(tmp_path / f"{name}.nii.gz"))
    quick = {"affine_metric": "mse", "affine_iterations": [40, 20, 10], "iterations": [40, 20, 10]}
    kw = {
        "template": str(tmp_path / "template.nii.gz"),
        "image": str(tmp_path / "image.nii.gz"),
        "params": dict(SYN, fireants=quick),
        "backend": "fireants",
        **{f"out_{k}": str(tmp_path / f"{k}.nii.gz") for k in ("warp", "inverse_warp", "warped")},
        "out_affine": str(tmp_path / "affine.mat"),
    }
    step = "registration.register_to_template"
    code = "; ".join(
        [
            "import json, sys",
            "from atlas.registration import set_determinism",
            "from atlas.runner import run_job",
            "set_determinism(3, 1)",
            f"run_job({step!r}, **json.loads({json.dumps(json.dumps(kw))}))",
            "print('ants' in sys.modules)",
        ]
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    job = ants.image_read(kw["out_warped"]).numpy()
    ref = ants.apply_transforms(fixed, image, [kw["out_warp"], kw["out_affine"]]).numpy()
    assert np.abs(job - ref).max() < 5e-3 * np.abs(ref).max()

    preset = preset_kwargs({"transform": "SyN", "backend": "fireants", "fireants": quick})
    assert preset == {"type_of_transform": "SyN", "backend_name": "fireants", "fireants": quick}
    reg = register_preset(image, image, str(tmp_path / "reg_"), **preset)
    warped = ants.apply_transforms(
        image, labels, list(reg.forward.paths), interpolator="nearestNeighbor"
    ).numpy()
    assert set(np.unique(warped)) == {0, 3, 7, 42}
