# Snakemake's own cost for the atlas DAG shape (N images, K = 5 template iterations: the
# same 9,014 jobs for N = 1000, the same fan-in of the joins, `script:` rules with
# resources and params), with O(1) input functions, no BIDS query and no validation: the
# floor of `snakemake -n` for this DAG. Timed by `benchmarks/startup_1000.py --floor`
# (config: bids_dir and output_dir of its cohort; the T1w files must exist).
from pathlib import Path

IMGS = sorted(p.name for p in Path(config["bids_dir"]).glob("sub-*"))
K = 5
O = f"{config['output_dir']}/floor"
W = f"{O}/work"
SRC = {i: f"{config['bids_dir']}/{i}/anat/{i}_T1w.nii.gz" for i in IMGS}
res = dict(mem_mb=2000, runtime=30)


def subj(suffix):
    return f"{O}/{{img}}/anat/{{img}}_{suffix}"


def all_subj(suffix):
    return [f"{O}/{i}/anat/{i}_{suffix}" for i in IMGS]


def it(k, name):
    return f"{W}/template/iter-{k}/{name}"


FINAL = [
    f"{O}/tpl/tpl_{x}"
    for x in (
        "T1w.nii.gz",
        "mask.nii.gz",
        "desc.json",
        "conv.tsv",
        "subj.tsv",
        "var.nii.gz",
        "m.png",
        "c.png",
        "s.png",
    )
]
FIGS = [f"{O}/figures/{i}_reg.png" for i in IMGS]
TARGETS = [
    f"{O}/dataset_description.json",
    f"{O}/methods.md",
    f"{O}/methods.html",
    f"{O}/excluded.tsv",
    *FINAL,
    *FIGS,
    *all_subj("space-tpl_T1w.nii.gz"),
]


wildcard_constraints:
    img=r"sub-[A-Za-z0-9]+",
    k=r"\d+",


rule all:
    input:
        TARGETS,
        f"{O}/manifest.tsv",


rule reference:
    output:
        f"{W}/ref.nii.gz",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule preprocess:
    input:
        t1w=lambda w: SRC[w.img],
        ref=rules.reference.output[0],
    output:
        a=subj("preproc.nii.gz"),
        b=subj("mask.nii.gz"),
        c=subj("preproc.json"),
    log:
        f"{O}/logs/{{img}}_pre.log",
    threads: 1
    resources:
        **res,
    params:
        step="x",
        settings={"a": 1},
    script:
        "../workflow/scripts/run.py"


rule normalise:
    input:
        image=rules.preprocess.output.a,
        ref=rules.reference.output[0],
    output:
        a=subj("xfm.mat"),
        b=subj("space-ref_T1w.nii.gz"),
    log:
        f"{O}/logs/{{img}}_norm.log",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule init:
    input:
        all_subj("space-ref_T1w.nii.gz"),
    output:
        it(0, "template_T1w.nii.gz"),
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


def reg_inputs(w):
    return {
        "template": it(w.k, "template_T1w.nii.gz"),
        "image": f"{O}/{w.img}/anat/{w.img}_preproc.nii.gz",
        "aff": f"{O}/{w.img}/anat/{w.img}_xfm.mat",
    }


rule register:
    input:
        unpack(reg_inputs),
    output:
        a=it("{k}", "{img}_affine.mat"),
        b=it("{k}", "{img}_warped.nii.gz"),
        c=it("{k}", "{img}_warp.nii.gz"),
        d=it("{k}", "{img}_inverse-warp.nii.gz"),
    log:
        f"{O}/logs/it-{{k}}_{{img}}.log",
    resources:
        **res,
    params:
        step="x",
        p=lambda w: {"k": w.k},
    script:
        "../workflow/scripts/run.py"


def upd_inputs(w):
    k = int(w.k) - 1
    return {
        "template": it(k, "template_T1w.nii.gz"),
        "warped": [it(k, f"{i}_warped.nii.gz") for i in IMGS],
        "affines": [it(k, f"{i}_affine.mat") for i in IMGS],
        "warps": [it(k, f"{i}_warp.nii.gz") for i in IMGS],
    }


rule update:
    input:
        unpack(upd_inputs),
    output:
        a=it("{k}", "template_T1w.nii.gz"),
        b=it("{k}", "convergence.tsv"),
    wildcard_constraints:
        k=r"[1-9]\d*",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule subject_final:
    input:
        template=it(K, "template_T1w.nii.gz"),
        a=it(K - 1, "{img}_affine.mat"),
        b=it(K - 1, "{img}_warp.nii.gz"),
        c=it(K - 1, "{img}_inverse-warp.nii.gz"),
        image=rules.preprocess.output.a,
        mask=rules.preprocess.output.b,
    output:
        a=subj("tpl_affine.mat"),
        b=subj("tpl_warp.nii.gz"),
        c=subj("tpl_inv.nii.gz"),
        d=subj("space-tpl_T1w.nii.gz"),
        e=subj("space-tpl_mask.nii.gz"),
        f=f"{W}/final/{{img}}_metrics.tsv",
    log:
        f"{O}/logs/{{img}}_final.log",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule template_final:
    input:
        templates=[it(k, "template_T1w.nii.gz") for k in range(K + 1)],
        masks=all_subj("space-tpl_mask.nii.gz"),
        rows=[f"{W}/final/{i}_metrics.tsv" for i in IMGS],
        conv=[it(k, "convergence.tsv") for k in range(1, K + 1)],
        warped=all_subj("space-tpl_T1w.nii.gz"),
    output:
        FINAL,
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule figure:
    input:
        image=subj("space-tpl_T1w.nii.gz"),
        template=FINAL[0],
    output:
        f"{O}/figures/{{img}}_reg.png",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule dataset_description:
    input:
        list(SRC.values()),
    output:
        f"{O}/dataset_description.json",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule methods:
    output:
        f"{O}/methods.md",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule methods_html:
    input:
        f"{O}/methods.md",
    output:
        f"{O}/methods.html",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule excluded:
    output:
        f"{O}/excluded.tsv",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"


rule manifest:
    input:
        TARGETS,
    output:
        f"{O}/manifest.tsv",
    resources:
        **res,
    params:
        step="x",
    script:
        "../workflow/scripts/run.py"
