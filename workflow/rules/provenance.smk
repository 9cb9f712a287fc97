# Provenance of the run (atlas.provenance): dataset description with the code version,
# resolved config with input checksums, the methods paragraph with its citations (and as
# HTML for the report), the table of excluded images, and a manifest of every output with
# its checksum (last: it reads ALL_TARGETS).
import sys

COMMAND_LINE = " ".join(sys.argv)
PROVENANCE = {
    "methods": f"{OUT}/methods.md",
    "methods_html": f"{OUT}/methods.html",
    "bib": f"{OUT}/citations.bib",
    "excluded": f"{OUT}/group/desc-excluded_table.tsv",
    "manifest": f"{OUT}/manifest.tsv",
}


rule dataset_description:
    input:
        images=list(SOURCE.values()),
    output:
        out_json=f"{OUT}/dataset_description.json",
        out_config=f"{OUT}/atlas_config.json",
    log:
        f"{OUT}/logs/dataset_description.log",
    conda:
        ENV_REPORT
    resources:
        **job_resources("light"),
    params:
        step="provenance.dataset_files",
        name=TPL,
        bids_dir=BIDS_DIR,
        config=config,
        # a function: Snakemake formats string params with the wildcards, and a command
        # line can hold braces (the SLURM profile's `--groups ...=register-{k}`)
        command_line=lambda w: COMMAND_LINE,
    script:
        RUN


rule methods:
    output:
        out_methods=PROVENANCE["methods"],
        out_bib=PROVENANCE["bib"],
    log:
        f"{OUT}/logs/methods.log",
    conda:
        ENV_REPORT
    resources:
        **job_resources("light"),
    params:
        step="provenance.methods",
        config=config,
        n_images=len(IMAGES),
        n_longitudinal=len(LONG.subjects) if LONG_ON else 0,
    script:
        RUN


# The methods text as HTML, for the report (Snakemake shows HTML items, not Markdown).
rule methods_html:
    input:
        methods=PROVENANCE["methods"],
    output:
        out_html=report(
            PROVENANCE["methods_html"],
            caption=f"{REPORT}/methods.rst",
            category="Methods",
        ),
    log:
        f"{OUT}/logs/methods_html.log",
    conda:
        ENV_REPORT
    resources:
        **job_resources("light"),
    params:
        step="provenance.methods_html",
    script:
        RUN


# Images left out by on_bad_subject: skip, with the reason (header only when none).
rule excluded_table:
    output:
        out_table=report(
            PROVENANCE["excluded"],
            caption=f"{REPORT}/excluded.rst",
            category="Inputs",
        ),
    log:
        f"{OUT}/logs/excluded_table.log",
    conda:
        ENV_REPORT
    resources:
        **job_resources("light"),
    params:
        step="provenance.excluded_table",
        excluded=IMAGES.attrs.get("excluded", {}),
    script:
        RUN


rule manifest:
    input:
        files=ALL_TARGETS,
    output:
        out_manifest=PROVENANCE["manifest"],
    log:
        f"{OUT}/logs/manifest.log",
    conda:
        ENV_REPORT
    resources:
        **job_resources("light"),
    params:
        step="provenance.manifest",
    script:
        RUN
