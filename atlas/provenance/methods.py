"""The methods paragraph of a run, generated from the config it ran with, and its citations.

In the style of the sMRIPrep/fMRIPrep boilerplate: text a study can paste into its methods
section, stating every step and parameter that ran, with software versions and citation
keys (``[@key]``, Pandoc style) resolved by :data:`CITATIONS` (:func:`bibtex`).
"""

from __future__ import annotations

import re
from pathlib import Path

#: The BibTeX file holding every entry the methods text may cite.
BIB_FILE = Path(__file__).with_name("citations.bib")


def _entries(text: str) -> dict[str, str]:
    """BibTeX entries of ``text`` by key (each entry starts a line with ``@type{key,``)."""
    starts = [m.start() for m in re.finditer(r"^@\w+\{", text, flags=re.M)] + [len(text)]
    out = {}
    for a, b in zip(starts, starts[1:], strict=False):
        entry = text[a:b].strip()
        out[entry[entry.index("{") + 1 : entry.index(",")]] = entry
    return out


#: BibTeX entries by citation key, from :data:`BIB_FILE`.
CITATIONS = _entries(BIB_FILE.read_text(encoding="utf-8"))

_MNI = "the MNI ICBM152 2009a symmetric template [@fonov2011]"
_REFERENCE_NAMES = {
    "MNI152NLin2009aSym": _MNI + " (shipped with nilearn {nilearn})",
    "cohort": _MNI + " (rigid alignment only; the cohort's own affine template is then built "
    "by the template's affine iterations)",
}


def _levels(values) -> str:
    return "x".join(str(v) for v in values)


def preprocessing_text(config: dict, versions: dict) -> str:
    """Paragraph on preprocessing and affine normalisation (config keys ``resolution``,
    ``skull_strip``, ``intensity_normalisation``, ``fov_margin_mm``, ``reference``,
    ``template.affine``)."""
    strip = {
        "auto": "brain-only inputs were detected by their foreground volume (at most "
        f"{config['brain_only_max_volume_ml']:g} mL) and masked by it, the others were "
        "corrected for intensity non-uniformity as below on the whole image and then "
        "skull-stripped by registering a whole-head template with a brain mask",
        "template": "each image was corrected for intensity non-uniformity as below on the "
        "whole image, and the brain was extracted by registering a whole-head template with a "
        "brain mask (affine and SyN at 3 mm) and carrying the mask back",
        "skip": "no skull stripping was applied (the image foreground served as brain mask)",
    }[config["skull_strip"]]
    intensity = {
        "percentile": "rescaled so that the 1st and 99th percentiles of the brain intensities "
        "map to 0 and 1",
        "histogram": "matched to the reference histogram [@nyul1999] and rescaled so that the "
        "1st and 99th percentiles of the brain intensities map to 0 and 1",
    }[config["intensity_normalisation"]]
    aff = config["template"]["affine"]
    ref = _REFERENCE_NAMES.get(config["reference"], f"the template `{config['reference']}`")
    return (
        f"Each T1-weighted image was reoriented to RAS; {strip}. Intensity non-uniformity "
        "was corrected inside the brain mask with N4 [@tustison2010] as implemented in ANTs "
        f"(antspyx {versions.get('antspyx')}) [@tustison2021] and intensities were "
        f"{intensity}. Images were resampled to "
        f"{config['resolution']:g} mm isotropic voxels and cropped to the brain plus "
        f"{config['fov_margin_mm']:g} mm. Each image was then aligned to "
        f"{ref.format(nilearn=versions.get('nilearn'))} by centre-of-mass initialisation, "
        f"rigid and affine registration (ANTs; {aff['affine_metric']} metric "
        f"({aff['affine_metric_param']}), {_levels(aff['affine_iterations'])} iterations at "
        f"shrink factors {_levels(aff['affine_shrink_factors'])})."
    )


def registration_text(block: dict, ants: str) -> str:
    """How images were registered by the engine of a config block with a ``backend`` key
    (``template``, ``segmentation.registration``, ``longitudinal``; default ``ants``):
    ``ants`` is the phrase for that block's ANTs settings; ``greedy`` and ``fireants`` are
    described from the block's ``greedy`` / ``fireants`` settings merged over the backend's
    ``DEFAULTS`` (:mod:`atlas.registration.greedy`, :mod:`atlas.registration.fireants`).

    Raises
    ------
    KeyError for a backend not in :data:`atlas.registration.BACKENDS`.
    """
    backend = block.get("backend") or "ants"
    if backend == "ants":
        return ants
    if backend == "greedy":
        from ..registration.greedy import DEFAULTS

        g = DEFAULTS | (block.get("greedy") or {})
        svf = ", stationary velocity fields" if g["svf"] else ""
        return (
            f"affine ({g['affine_metric']} metric, {_levels(g['affine_iterations'])} "
            "iterations), then greedy diffeomorphic registration with Greedy "
            f"[@yushkevich2016] ({g['metric']} metric, radius {g['metric_radius']} voxels, "
            f"{_levels(g['iterations'])} iterations, update-field and total-field smoothing "
            f"{g['smoothing_vox'][0]:g} and {g['smoothing_vox'][1]:g} voxels{svf})"
        )
    if backend == "fireants":
        from ..registration.fireants import DEFAULTS

        f = DEFAULTS | (block.get("fireants") or {})
        return (
            f"affine ({f['affine_metric']} metric, {_levels(f['affine_iterations'])} "
            "iterations), then diffeomorphic registration with FireANTs [@jena2024] "
            f"({f['metric']} metric, window {f['cc_kernel_size']} voxels, "
            f"{_levels(f['iterations'])} iterations at downsampling factors "
            f"{_levels(f['scales'])}, Riemannian Adam with learning rate {f['lr']:g})"
        )
    raise KeyError(f"no methods text for registration backend {backend!r}")


def _syn_text(syn: dict) -> str:
    """The ANTs phrase of :func:`registration_text` for ``template.syn``-style settings."""
    return (
        "affine, then symmetric normalisation (SyN) [@avants2008] in ANTs with the "
        f"{syn['metric']} metric ({syn['metric_param']}), {_levels(syn['iterations'])} "
        f"iterations, gradient step {syn['syn_gradient_step']:g}, update-field smoothing "
        f"{syn['flow_sigma']:g} voxels and total-field smoothing {syn['total_sigma']:g} voxels"
    )


def template_text(config: dict) -> str:
    """Paragraph on the groupwise template (config block ``template``)."""
    t = config["template"]
    sharpen = (
        " and sharpened (Laplacian sharpening blended at 25 %, as `ants.build_template`)"
        if t["sharpen"]
        else ""
    )
    coarse = (
        " Deformable iterations before the last skipped the finest level of the schedule."
        if t.get("coarse_to_fine", True) and t["syn_iterations"] > 1
        else ""
    )
    registration = registration_text(t, _syn_text(t["syn"]))
    return (
        f"A population template (`tpl-{t['name']}`) was built by iterative "
        "mean-then-register template construction (SyGN) [@avants2010]. The initial "
        f"template was the voxel-wise {t['average'].replace('_', ' ')} of the affinely "
        f"normalised images. {t['affine_iterations']} affine and {t['syn_iterations']} "
        "deformable iterations followed; each registered every image to the current template "
        f"({registration}), averaged the registered images, applied the shape update "
        f"(the mean forward warp scaled by -{t['gradient_step']:g} and the "
        f"inverse mean affine){sharpen}.{coarse} Each registration ran as its own job "
        f"(Snakemake [@molder2021]) with {config['threads_per_job']} thread(s) and seed "
        f"{config['seed']}."
    )


def segmentation_text(config: dict) -> str:
    """Paragraph on multi-atlas segmentation (config block ``segmentation``); empty when no
    atlases are configured."""
    seg = config["segmentation"]
    if not seg["atlases"]:
        return ""
    fusion = {
        "majority": "majority voting",
        "weighted": "locally weighted voting (local normalised cross-correlation, radius "
        f"{seg['patch_radius_mm']:g} mm)",
        "jlf": f"joint label fusion [@wang2013] (patch radius {seg['patch_radius_mm']:g} mm, "
        f"search radius {seg['search_radius_mm']:g} mm)",
        "staple": "STAPLE [@warfield2004]",
    }[seg["fusion"]]
    route = {
        "direct": "registered to each image",
        "template": "registered once to the population template, and carried to each image "
        "through that image's template transforms (one interpolation)",
    }[seg["route"]]
    reg = seg["registration"]
    ants = (
        "affine, then symmetric normalisation (SyN) [@avants2008] in ANTs (`ants.registration` "
        f"preset `{reg['transform']}`, Mattes mutual information, "
        f"{_levels(reg['iterations'])} SyN iterations)"
    )
    return (
        "Labelled atlases were preprocessed like the images, "
        f"{route} ({registration_text(reg, ants)}), "
        f"their label maps propagated with {seg['label_interpolation']} interpolation "
        f"(atlases whose registered T1w correlated below NCC {seg['qc']['min_ncc']:g} with "
        f"the target were excluded) and fused by {fusion}."
    )


def learned_text(config: dict, versions: dict) -> str:
    """Paragraph on the learned age-conditional atlas (config block ``learned``); empty
    when it is disabled."""
    lcfg = config["learned"]
    if not lcfg["enabled"]:
        return ""
    tr = lcfg["train"]
    source = (
        "its three-class Atropos segmentation (CSF, GM, WM by T1w intensity) [@avants2011]"
        if lcfg["source"] == "cohort"
        else "its tissue segmentation"
    )
    tissue = (
        " The atlas also output tissue probability maps (softmax over background and "
        "tissues), supervised by the soft Dice plus cross-entropy between the maps warped to "
        f"each training subject and {source} (weight {lcfg['tissue_weight']:g})."
        if lcfg.get("tissue_weight", 0) > 0
        else ""
    )
    d = lcfg.get("discriminator") or {}
    adversarial = (
        " An age-conditional patch discriminator with spectral normalisation was trained "
        "against the atlas warped to each subject (Atlas-GAN [@dey2021]; "
        f"{d.get('loss')} loss, {d.get('penalty')} gradient penalty of weight "
        f"{d.get('penalty_weight', 0):g}, adversarial weight {d.get('weight', 0):g} ramped "
        f"from 0 over {d.get('warmup_steps')} steps)."
        if lcfg.get("adversarial")
        else ""
    )
    aarn = (
        " An affine rescaling network fitted to the normalisation affines restored the "
        "age-specific brain size of each atlas."
        if lcfg["aarn"] and lcfg["source"] == "cohort"
        else ""
    )
    return (
        "An age-conditional deformable atlas [@dalca2019] was trained with a diffeomorphic "
        f"registration network [@balakrishnan2019] (PyTorch {versions.get('torch')}): "
        f"{tr['steps']} steps of Adam (learning rate {tr['lr']:g}, batch size "
        f"{tr['batch_size']}), {tr['similarity']} similarity, {tr['reg']} regularisation "
        f"(weight {tr['reg_weight']:g}), {tr['int_steps']} scaling-and-squaring steps and "
        f"seed {tr['seed']}. Atlases were sampled at {', '.join(map(str, lcfg['ages']))} "
        f"{lcfg['age_units']}.{tissue}{adversarial}{aarn}"
    )


def longitudinal_text(config: dict, n_subjects: int) -> str:
    """Paragraph on longitudinal tracking (config block ``longitudinal``) of ``n_subjects``
    subjects with two or more sessions; empty when there are none."""
    if not n_subjects:
        return ""
    lcfg = config["longitudinal"]
    sst = lcfg["sst"]
    syn = {**config["template"]["syn"], **(sst.get("syn") or {})}
    labels = (
        "the multi-atlas segmentation of the SST"
        if config["segmentation"]["atlases"]
        else "the population template's labels carried to the SST"
    )
    return (
        f"{n_subjects} subjects with two or more sessions were processed longitudinally "
        "[@reuter2012]: an unbiased single-subject template (SST) of each subject's sessions "
        "was built by the same iterative procedure, starting from the mean of the sessions "
        f"after affine normalisation (no session served as target), with "
        f"{sst['affine_iterations']} rigid/affine and {sst['syn_iterations']} deformable "
        f"iterations ({registration_text(lcfg, _syn_text(syn))}). Each SST was registered "
        "once to the population template, and each session reached the template through the "
        "composed session-to-SST-to-template transforms with one interpolation. Each session "
        f"was labelled with {labels}, carried to the session; change between sessions was "
        "measured from the label volumes and by integrating the Jacobian determinant of the "
        "session-to-SST transform over each structure, and volume against age was modelled "
        "by linear mixed-effects models with a random intercept and slope per subject "
        "(statsmodels `mixedlm` [@seabold2010])."
    )


def methods_text(config: dict, versions: dict, n_images: int, n_longitudinal: int = 0) -> str:
    """The methods section (Markdown) of a run: one paragraph per stage that ran, the
    software versions, and a note on how to cite.

    ``config`` is the resolved config of the run, ``versions`` the output of
    :func:`atlas.provenance.software_versions`, ``n_images`` the number of T1w images,
    ``n_longitudinal`` the number of subjects tracked longitudinally.
    """
    paragraphs = [
        f"Results were produced by atlas {versions.get('atlas')} from {n_images} "
        "T1-weighted images.",
        preprocessing_text(config, versions),
        template_text(config),
        segmentation_text(config),
        learned_text(config, versions),
        longitudinal_text(config, n_longitudinal),
    ]
    software = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    body = "\n\n".join(p for p in paragraphs if p)
    return (
        "# Methods\n\n"
        "*Generated from the configuration of this run; the references are in "
        "`citations.bib`.*\n\n"
        f"{body}\n\nSoftware: {software}.\n"
    )


def cited_keys(text: str) -> list[str]:
    """Citation keys ``[@key]`` used in ``text``, in order of first use."""
    return list(dict.fromkeys(re.findall(r"\[@([A-Za-z0-9_]+)\]", text)))


def bibtex(keys) -> str:
    """BibTeX of ``keys`` from :data:`CITATIONS`.

    Raises
    ------
    KeyError naming a key without an entry.
    """
    missing = [k for k in keys if k not in CITATIONS]
    if missing:
        raise KeyError(f"no BibTeX entry for {missing}")
    return "\n\n".join(CITATIONS[k] for k in keys) + "\n"
