# Provenance of the run (atlas.provenance): dataset description with the code version,
# resolved config with input checksums, the methods paragraph with its citations, and a
# manifest of every output with its checksum (last: it reads ALL_TARGETS).
import sys

COMMAND_LINE = " ".join(sys.argv)
PROVENANCE = {
    "methods": f"{OUT}/methods.md",
    "bib": f"{OUT}/citations.bib",
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
        ENV
    params:
        step="provenance.dataset_files",
        name=TPL,
        bids_dir=BIDS_DIR,
        config=config,
        command_line=COMMAND_LINE,
    script:
        RUN


rule methods:
    output:
        out_methods=PROVENANCE["methods"],
        out_bib=PROVENANCE["bib"],
    log:
        f"{OUT}/logs/methods.log",
    conda:
        ENV
    params:
        step="provenance.methods",
        config=config,
        n_images=len(IMAGES),
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
        ENV
    params:
        step="provenance.manifest",
    script:
        RUN
