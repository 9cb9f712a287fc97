"""atlas: BIDS cohort of T1w MRI -> population template (SyGN) and derived outputs.

Run the demo:      snakemake --cores all
Run on a study:    snakemake --cores all --config bids_dir=/path/to/bids output_dir=out
"""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/template.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/learned.smk"
include: "workflow/rules/longitudinal.smk"


# Every output of a full run (the manifest lists them with their checksums).
ALL_TARGETS = [
    f"{OUT}/dataset_description.json",
    f"{OUT}/atlas_config.json",
    f"{OUT}/methods.md",
    f"{OUT}/methods.html",
    f"{OUT}/citations.bib",
    f"{OUT}/group/desc-excluded_table.tsv",
    *TEMPLATE_OUTPUTS.values(),
    *REGISTRATION_FIGURES,
    *subject_files("space-{tpl}_desc-preproc_T1w.nii.gz"),
    *SEGMENT_TARGETS,
    *(LEARNED_TARGETS if config["learned"]["enabled"] else []),
    *LONGITUDINAL_TARGETS,
]


include: "workflow/rules/provenance.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS,
        PROVENANCE["manifest"],


# `atlas BIDS_DIR OUTPUT_DIR group`: the template and the group stages (as `all`).
rule group:
    input:
        rules.all.input,
