"""The greedy backend's own paths: the template registration job on SimpleITK images (no
ANTs import) gives the files of the ANTs-image path, and Greedy settings reach the engine."""

import json
import subprocess
import sys

import ants
import numpy as np
from test_registration_backends import SYN, _phantom, _smooth_field

from atlas.registration import read_affine_ras
from atlas.runner import run_job


def test_greedy_job_never_loads_ants_and_matches_the_ants_image_path(tmp_path, monkeypatch):
    """registration.register_to_template with backend greedy, run as a workflow job (fresh
    interpreter, seed and one thread fixed), leaves ANTs unloaded (~3 s saved per job) and
    writes the affine and warp that the same registration on ANTs images writes (same
    voxels in float32, same seed and threads: bit-identical), and a warped image within 0.5 %
    of the intensity range of the ANTs resampling of those files (both linear interpolation;
    measured 0.2 %, float32 coordinate rounding of the two resamplers)."""
    image, _, _ = _phantom(n=32, spacing=3.0)
    _, field = _smooth_field(image)
    ants.image_write(field, str(tmp_path / "true.nii.gz"))
    fixed = ants.apply_transforms(image, image, [str(tmp_path / "true.nii.gz")])
    ants.image_write(fixed, str(tmp_path / "template.nii.gz"))
    ants.image_write(image, str(tmp_path / "image.nii.gz"))
    kw = {
        "template": str(tmp_path / "template.nii.gz"),
        "image": str(tmp_path / "image.nii.gz"),
        "params": SYN,
        "backend": "greedy",
    }
    outs = {k: str(tmp_path / f"job_{k}") for k in ("affine.mat", "warp.nii.gz", "inv.nii.gz")}
    kw.update(
        out_affine=outs["affine.mat"],
        out_warp=outs["warp.nii.gz"],
        out_inverse_warp=outs["inv.nii.gz"],
        out_warped=str(tmp_path / "job_warped.nii.gz"),
    )
    code = (
        "import json, sys\n"
        "from atlas.registration import set_determinism\n"
        "from atlas.runner import run_job\n"
        "set_determinism(3, 1)\n"
        f"run_job('registration.register_to_template', **json.loads({json.dumps(json.dumps(kw))}))"
        "\n"
        "print('ants' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    # the same registration on ANTs images, here (Greedy takes its thread count per call)
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    monkeypatch.setenv("ANTS_RANDOM_SEED", "3")
    kw2 = dict(kw, **{k: v.replace("job_", "ref_") for k, v in kw.items() if k.startswith("out_")})
    run_job("registration.register_to_template", **kw2)
    np.testing.assert_array_equal(
        read_affine_ras(kw["out_affine"]), read_affine_ras(kw2["out_affine"])
    )
    job_warp = ants.image_read(kw["out_warp"]).numpy()
    np.testing.assert_array_equal(job_warp, ants.image_read(kw2["out_warp"]).numpy())
    job = ants.image_read(kw["out_warped"])
    ref = ants.apply_transforms(
        ants.image_read(kw["template"]),
        ants.image_read(kw["image"]),
        [kw["out_warp"], kw["out_affine"]],
    )
    assert np.abs(job.numpy() - ref.numpy()).max() < 5e-3 * np.abs(ref.numpy()).max()


def test_segmentation_config_reaches_greedy_register_preset(tmp_path):
    """segmentation.registration with backend greedy: preset_kwargs routes the greedy block
    (not ANTs' iterations) to the greedy register_preset, whose chains name ANTs-style files
    that ants.apply_transforms reads, and the warped labels keep their ids."""
    from atlas.registration import preset_kwargs, register_preset

    image, labels, _ = _phantom(n=32, spacing=3.0)
    cfg = {"transform": "SyN", "iterations": [40, 20, 0], "backend": "greedy"}
    kw = preset_kwargs(dict(cfg, greedy={"iterations": [20, 10, 0]}))
    assert kw == {
        "type_of_transform": "SyN",
        "backend_name": "greedy",
        "greedy": {"iterations": [20, 10, 0]},
    }
    assert preset_kwargs(dict(cfg, backend="ants"))["reg_iterations"] == [40, 20, 0]
    reg = register_preset(image, image, str(tmp_path / "reg_"), **kw)
    assert [p.rsplit("_", 1)[-1] for p in reg.forward.paths] == [
        "1Warp.nii.gz",
        "0GenericAffine.mat",
    ]
    warped = ants.apply_transforms(
        image, labels, list(reg.forward.paths), interpolator="nearestNeighbor"
    ).numpy()
    assert set(np.unique(warped)) == {0, 3, 7, 42}
