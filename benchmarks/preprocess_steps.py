"""Benchmark: where preprocessing time goes, step by step, on 1 mm brain-only images.

For each image (one ITK thread): the seconds of each step of
:func:`atlas.preprocess.preprocess_t1w` as the workflow runs it (whole-image N4, the
foreground mask, N4 inside the mask + intensity normalisation) and of the whole function,
next to the foreground mask the way it was made before (ANTs ``iMath``
``GetLargestComponent`` + ``FillHoles``, three times per image), with whether the two masks
are identical.

    nice -n 5 python benchmarks/preprocess_steps.py            # MICCAI 2012, infant
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
    t0 = time.perf_counter()
    out = f(*args, **kw)
    return out, time.perf_counter() - t0


def row(path: Path) -> dict:
    raw = ants.image_read(str(path))
    image = methods.reorient(raw.astype("float32"))
    corrected, t_n4 = timed(methods.n4, image)
    fg, t_fg = timed(methods.foreground_mask, corrected)
    thr = 0.05 * np.percentile(corrected.numpy(), 99.5)
    binary = ants.threshold_image(corrected, thr, None, 1, 0)
    fg_ants, t_fg_ants = timed(
        lambda b: ants.iMath(ants.iMath(b, "GetLargestComponent"), "FillHoles"), binary
    )
    _, t_rest = timed(lambda: methods.normalise_intensity(methods.n4(corrected, fg), fg))
    _, t_all = timed(methods.preprocess_t1w, raw, resolution=2.0)
    return {
        "image": path.name,
        "shape": "x".join(map(str, image.shape)),
        "n4_whole_image_s": round(t_n4, 2),
        "foreground_s": round(t_fg, 2),
        "foreground_ants_s": round(t_fg_ants, 2),
        "foreground_identical": bool(np.array_equal(fg.numpy() > 0, fg_ants.numpy() > 0)),
        "n4_in_mask_and_normalise_s": round(t_rest, 2),
        "preprocess_t1w_s": round(t_all, 2),
    }


def main(paths) -> None:
    set_determinism(1, 1)
    table = pd.DataFrame([row(Path(p)) for p in paths])
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
