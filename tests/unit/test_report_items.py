"""Report items of a run (issue 16, item 4): the registration view of each image, the
methods text as HTML and the table of excluded images."""

import matplotlib.image
import nibabel as nib
import numpy as np
import pandas as pd

from atlas import qc
from atlas.provenance import jobs as provenance_jobs
from atlas.template import jobs as template_jobs


def _blob(shift: int = 0) -> nib.Nifti1Image:
    """A 24^3 volume at 4 mm: a bright ellipsoid with a darker core, shifted along x."""
    x, y, z = np.meshgrid(*(np.arange(24) - 12.0,) * 3, indexing="ij")
    r = ((x - shift) / 9) ** 2 + (y / 10) ** 2 + (z / 8) ** 2
    data = np.where(r < 1, 100.0, 0.0) - np.where(r < 0.3, 40.0, 0.0)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -48
    return nib.Nifti1Image(data.astype(np.float32), affine)


def test_cut_coords_span_the_foreground():
    cuts = qc._cut_coords(_blob(), 5)
    assert set(cuts) == {"x", "y", "z"}
    for axis, values in cuts.items():
        assert len(values) == 5 and values == sorted(values), axis
        assert -40 < values[0] < values[-1] < 40, axis


def test_registration_figure_writes_a_png(tmp_path):
    nib.save(_blob(), tmp_path / "tpl.nii.gz")
    nib.save(_blob(shift=2), tmp_path / "img.nii.gz")
    out = tmp_path / "fig" / "sub-01_space-tpl_desc-registration_T1w.png"
    template_jobs.registration_figure(
        image=tmp_path / "img.nii.gz",
        template=tmp_path / "tpl.nii.gz",
        out_figure=out,
        img="sub-01",
    )
    png = matplotlib.image.imread(out)
    assert png.shape[0] > 300 and png.shape[1] > 600
    red = (png[..., 0] > 0.8) & (png[..., 1] < 0.3) & (png[..., 2] < 0.3)
    assert red.sum() > 100  # the template's edges are drawn
    assert list(out.parent.iterdir()) == [out]  # no temporary file left


def test_markdown_to_html():
    text = "# Methods\n\n*Generated* with `atlas`;\na <b> & **bold** [@key].\n\n## Next\n"
    page = provenance_jobs.markdown_to_html(text)
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert "<h1>Methods</h1>" in page and "<h2>Next</h2>" in page
    assert (
        "<p><em>Generated</em> with <code>atlas</code>; a &lt;b&gt; &amp; "
        "<strong>bold</strong> [@key].</p>"
    ) in page


def test_methods_html_job(tmp_path):
    (tmp_path / "methods.md").write_text("# Methods\n\nText of the run.\n", encoding="utf-8")
    out = tmp_path / "out" / "methods.html"
    provenance_jobs.methods_html(methods=tmp_path / "methods.md", out_html=out)
    page = out.read_text(encoding="utf-8")
    assert "<h1>Methods</h1>" in page and "<p>Text of the run.</p>" in page


def test_excluded_table(tmp_path):
    out = tmp_path / "group" / "desc-excluded_table.tsv"
    provenance_jobs.excluded_table(out_table=out, excluded={})
    assert out.read_text() == "img\treason\n"
    provenance_jobs.excluded_table(
        out_table=out, excluded={"sub-04": "x.nii.gz: image is\nconstant (0.0)"}
    )
    table = pd.read_csv(out, sep="\t")
    assert table.to_dict(orient="records") == [
        {"img": "sub-04", "reason": "x.nii.gz: image is constant (0.0)"}
    ]


def test_segmentation_overlay_draws_the_labels(tmp_path):
    from atlas.segmentation import jobs as segmentation_jobs

    image = _blob()
    labels = (np.asanyarray(image.dataobj) > 50).astype(np.int16)
    labels[:12] *= 2  # two labels, left and right
    nib.save(image, tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(labels, image.affine), tmp_path / "dseg.nii.gz")
    out = tmp_path / "fig" / "sub-01_desc-jlf_dseg.png"
    segmentation_jobs.overlay_figure(
        image=tmp_path / "img.nii.gz", dseg=tmp_path / "dseg.nii.gz", out_figure=out, img="sub-01"
    )
    png = matplotlib.image.imread(out)[..., :3]
    grey = np.ptp(png, axis=-1) < 0.05
    assert png.shape[0] > 300 and (~grey).sum() > 500  # coloured label overlay drawn
    assert list(out.parent.iterdir()) == [out]
