"""atlas: population brain MRI atlases as a Snakemake workflow (see README.md)."""

__version__ = "0.1.0"
