"""Benchmark: where preprocessing time goes, and what the skipped or replaced steps change.

For each image (one ITK thread): the time of each step of
:func:`atlas.preprocess.preprocess_t1w` as the workflow runs it, next to the two steps
it no longer runs (issue 15):

- the foreground mask with ANTs ``iMath`` (``GetLargestComponent`` + ``FillHoles``)
  instead of scipy.ndimage: time, and whether the masks are identical;
- N4 of the whole image before brain extraction on brain-only inputs: time, and how
  much the final preprocessed image and mask change when it is run (mask Dice and
  intensity correlation inside the mask; 1.0 = unchanged).

    nice -n 5 python benchmarks/preprocess_steps.py            # MICCAI 2012, infant, IXI
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


def finish(image, mask):
    """The steps after brain extraction, as in :func:`atlas.preprocess.preprocess_t1w`."""
    image = methods.normalise_intensity(methods.n4(image, mask), mask)
    return image.numpy(), mask.numpy() > 0


def row(path: Path) -> dict:
    image = methods.reorient(ants.image_read(str(path)).astype("float32"))
    fg, t_fg = timed(methods.foreground_mask, image)
    thr = 0.05 * np.percentile(image.numpy(), 99.5)
    binary = ants.threshold_image(image, thr, None, 1, 0)
    fg_ants, t_fg_ants = timed(
        lambda b: ants.iMath(ants.iMath(b, "GetLargestComponent"), "FillHoles"), binary
    )
    (ours_img, ours_mask), t_rest = timed(finish, image, fg)
    corrected, t_n4_head = timed(methods.n4, image)
    old_img, old_mask = finish(corrected, methods.foreground_mask(corrected))
    both = ours_mask & old_mask
    return {
        "image": path.name,
        "shape": "x".join(map(str, image.shape)),
        "foreground_s": round(t_fg, 2),
        "foreground_ants_s": round(t_fg_ants, 2),
        "foreground_identical": bool(np.array_equal(fg.numpy() > 0, fg_ants.numpy() > 0)),
        "n4_brain_and_normalise_s": round(t_rest, 2),
        "skipped_n4_whole_image_s": round(t_n4_head, 2),
        "mask_dice_vs_with_n4": round(2 * both.sum() / (ours_mask.sum() + old_mask.sum()), 4),
        "intensity_corr_vs_with_n4": round(
            float(np.corrcoef(ours_img[both], old_img[both])[0, 1]), 5
        ),
    }


def main(paths) -> None:
    set_determinism(1, 1)
    table = pd.DataFrame([row(Path(p)) for p in paths])
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
