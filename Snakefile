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


rule all:
    default_target: True
    input:
        f"{OUT}/dataset_description.json",
        TEMPLATE_OUTPUTS.values(),
        subject_files("space-{tpl}_desc-preproc_T1w.nii.gz"),
        SEGMENT_TARGETS,
        LEARNED_TARGETS if config["learned"]["enabled"] else [],
