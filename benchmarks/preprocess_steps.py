"""Benchmark: where preprocessing time goes, step by step, on 1 mm brain-only images.

For each image (one ITK thread, CPU seconds): the steps of
:func:`atlas.preprocess.preprocess_t1w` as the workflow runs them on a brain-only input (the
foreground mask, one N4 inside it + intensity normalisation) and the whole function; next to
them the recipe it replaced (a whole-image N4 first, the foreground of the corrected image,
then the N4 inside the mask: what head images still get before skull stripping), its time,
the % of mask voxels in which the two brain masks differ and the correlation of the two
normalised images inside the mask.

    python benchmarks/preprocess_steps.py            # 3 MICCAI 2012 and 2 infant scans
    python benchmarks/preprocess_steps.py path/to/T1w.nii.gz ...
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import ants  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from atlas.preprocess import methods  # noqa: E402
from atlas.registration import set_determinism  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT = [
    *sorted(DATA.glob("miccai2012/sub-*/ses-1/anat/*_T1w.nii.gz"))[:3],
    *sorted(DATA.glob("infant/bids/sub-*/ses-*/anat/*_T1w.nii.gz"))[:2],
]


def timed(f, *args, **kw):
    t0 = time.process_time()
    out = f(*args, **kw)
    return out, time.process_time() - t0


def two_n4(image: ants.ANTsImage) -> tuple[ants.ANTsImage, ants.ANTsImage]:
    """The replaced recipe: whole-image N4, foreground of the corrected image, N4 inside it,
    normalisation (image and mask on the input grid)."""
    corrected = methods.n4(image)
    fg = methods.foreground_mask(corrected)
    return methods.normalise_intensity(methods.n4(corrected, fg), fg), fg


def row(path: Path) -> dict:
    raw = ants.image_read(str(path))
    image = methods.reorient(raw.astype("float32"))
    fg, t_fg = timed(methods.foreground_mask, image)
    new, t_n4 = timed(lambda: methods.normalise_intensity(methods.n4(image, fg), fg))
    _, t_all = timed(methods.preprocess_t1w, raw, resolution=2.0)
    (old, old_fg), t_old = timed(two_n4, image)
    inside = fg.numpy() > 0
    return {
        "image": path.name,
        "shape": "x".join(map(str, image.shape)),
        "foreground_s": round(t_fg, 2),
        "n4_in_mask_and_normalise_s": round(t_n4, 2),
        "preprocess_t1w_s": round(t_all, 2),
        "replaced_two_n4_s": round(t_old, 2),
        "mask_voxels_differing_pct": round(
            100.0 * float((inside != (old_fg.numpy() > 0)).sum()) / inside.sum(), 4
        ),
        "corr_vs_two_n4": round(
            float(np.corrcoef(new.numpy()[inside], old.numpy()[inside])[0, 1]), 5
        ),
    }


def main(paths) -> None:
    set_determinism(1, 1)
    table = pd.DataFrame([row(Path(p)) for p in paths])
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
