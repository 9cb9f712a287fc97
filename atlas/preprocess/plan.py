"""Preprocessing settings from the config: one source for every image the workflow
preprocesses (the cohort's images and the labelled atlases alike)."""

from __future__ import annotations


def preprocess_settings(config: dict) -> dict:
    """Keyword settings of :func:`atlas.preprocess.jobs.preprocess_image` from the config.

    Keys: ``resolution`` (mm), ``skull_strip``, ``head_template`` and ``head_mask`` (paths
    as str, or None), ``intensity``, ``max_brain_ml`` (mL), ``margin_mm`` and ``seed``; read
    from the config keys ``resolution``, ``skull_strip``, ``skull_strip_template.head`` /
    ``.mask``, ``intensity_normalisation``, ``brain_only_max_volume_ml``,
    ``fov_margin_mm`` and ``seed``.

    Raises
    ------
    KeyError naming a missing config key (the schema normally fills every default).
    """
    strip = config["skull_strip_template"]
    return {
        "resolution": float(config["resolution"]),
        "skull_strip": config["skull_strip"],
        "head_template": str(strip["head"]) if strip.get("head") else None,
        "head_mask": str(strip["mask"]) if strip.get("mask") else None,
        "intensity": config["intensity_normalisation"],
        "max_brain_ml": float(config["brain_only_max_volume_ml"]),
        "margin_mm": float(config["fov_margin_mm"]),
        "seed": int(config["seed"]),
    }
