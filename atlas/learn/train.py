"""Training of the age-conditional deformable template (Dalca et al. 2019, NeurIPS).

:func:`train` is a plain function (no CLI) so that a Snakemake rule or a notebook can call
it; it is resumable: a checkpoint is written atomically every ``checkpoint_every`` steps
and a later call with the same ``out_dir`` continues from it, giving the same result as
an uninterrupted run with the same seed on the same device.

Objective per batch of subjects ``s`` with attributes ``a`` (template = moving image)::

    L = sim(T(a) ∘ φ, s) + λ_reg R(v) + λ_c ||ū||^2 + λ_dice (1 - Dice(T_lab(a) ∘ φ, s_lab))

with ``φ = exp(v)`` (scaling and squaring), ``R`` the diffusion norm ``||∇v||^2`` or
``||(-α Δ + Id) v||^2`` (optionally with a cascade of ``α``), ``ū`` the running mean of
the displacements (centrality) and the Dice term only when label maps are given.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import losses
from .data import Cohort, attribute_matrix
from .networks import ConditionalAtlas, ConditionalTemplate, RegistrationNet

log = logging.getLogger(__name__)

DEFAULT_CONFIG = {
    "steps": 3000,  # optimiser steps
    "lr": 1e-3,  # Adam learning rate
    "batch_size": 8,  # subjects per step
    "similarity": "ncc",  # "ncc" (local NCC) or "mse"
    "ncc_window": 9,  # voxels per side of the NCC window
    "reg": "diffusion",  # "diffusion" (||∇v||^2) or "operator" (||(-αΔ+Id)v||^2)
    "reg_weight": 1.0,  # λ_reg
    "reg_alpha": [0.01, 0.005, 0.001],  # α of "operator": float or cascade of stages
    "centrality_weight": 0.01,  # λ_c, voxels^-2
    "centrality_momentum": 0.99,  # running-mean momentum of the mean displacement
    "dice_weight": 0.0,  # λ_dice; > 0 requires cohort labels and learns label channels
    "use_sex": False,  # condition on sex as well as age
    "enc": [16, 32, 32, 32],  # U-Net encoder channels
    "dec": [32, 32, 32, 32, 16],  # U-Net decoder channels
    "int_steps": 7,  # scaling-and-squaring steps
    "int_downsize": 2,  # velocity grid downsampling factor
    "template_hidden": 64,  # MLP width of the template generator
    "template_channels": 16,  # decoder width of the template generator
    "seed": 0,
    "checkpoint_every": 500,  # steps between checkpoints
    "log_every": 50,  # steps between progress log lines
    "device": "auto",  # "auto" (cuda, else cpu), "cpu" or "cuda"
}

# Keys that may change between an interrupted run and its resumption.
RESUMABLE_KEYS = {"steps", "checkpoint_every", "log_every", "device"}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; ``"cpu"``/``"cuda"`` as given.

    Raises
    ------
    ValueError for another name; RuntimeError if ``"cuda"`` is requested but unavailable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


def build_model(config: dict, meta: dict, base=None, base_labels=None) -> ConditionalAtlas:
    """Instantiate the :class:`ConditionalAtlas` described by ``config`` and ``meta``.

    ``meta`` holds ``shape``, ``n_attributes`` and ``n_labels`` (see :func:`train`);
    ``base`` / ``base_labels`` initialise the template (zeros when None, e.g. before
    loading a state dict).
    """
    shape = tuple(meta["shape"])
    base = np.zeros(shape, np.float32) if base is None else base
    if base_labels is None and meta["n_labels"]:
        base_labels = np.zeros((meta["n_labels"], *shape), np.float32)
    template = ConditionalTemplate(
        shape,
        meta["n_attributes"],
        base,
        base_labels,
        hidden=config["template_hidden"],
        channels=config["template_channels"],
    )
    registration = RegistrationNet(
        shape, config["enc"], config["dec"], config["int_steps"], config["int_downsize"]
    )
    return ConditionalAtlas(template, registration)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _plot_losses(history: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(history[0]) if history else []
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 1.8 * len(keys) + 0.5), sharex=True)
    axes = np.atleast_1d(axes)
    steps = np.arange(1, len(history) + 1)
    for ax, key in zip(axes, keys, strict=True):
        values = np.array([h[key] for h in history])
        width = max(1, len(values) // 50)
        ax.plot(steps, values, color="0.8", lw=0.5)
        ax.plot(steps[width - 1 :], np.convolve(values, np.ones(width) / width, "valid"))
        ax.set_ylabel(key)
    axes[-1].set_xlabel(f"step (line: moving average over {max(1, len(history) // 50)} steps)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def train(config: dict, cohort: Cohort, out_dir, on_step=None) -> dict:
    """Train (or resume training) a conditional deformable template.

    Parameters
    ----------
    config : hyperparameters; missing keys take :data:`DEFAULT_CONFIG` values
        (``steps``, ``lr``, ``batch_size``, ``similarity``, ``ncc_window`` (voxels),
        ``reg`` and ``reg_weight``, ``reg_alpha``, ``centrality_weight``, ``dice_weight``,
        ``use_sex``, network widths, ``seed``, ``checkpoint_every``, ``device``).
    cohort : affinely normalised training images ``(N, *S)`` with ages (years), and sex /
        labels when ``use_sex`` / ``dice_weight > 0`` ask for them.
    out_dir : output folder. Written: ``checkpoint.pt`` (every ``checkpoint_every``
        steps and at the end; everything needed to resume), ``model.pt`` (final weights,
        config and metadata; input of :mod:`atlas.learn.sample`), ``losses.tsv`` and
        ``loss.png`` (loss curves).
    on_step : optional callable ``(step, losses_dict)`` called after every step
        (progress reporting; an exception raised there aborts training like a kill).

    Returns
    -------
    dict with the paths ``model``, ``checkpoint``, ``losses``, ``loss_curve`` and
    ``final_loss`` (mean total loss over the last 10 % of steps).

    Raises
    ------
    ValueError for unknown config keys/values, missing sex or labels, or an existing
    checkpoint in ``out_dir`` trained on another cohort or with a different config (other
    than ``steps``/``checkpoint_every``/``log_every``/``device``; changing ``steps`` also
    moves the stage boundaries of an ``reg_alpha`` cascade).
    """
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    cfg = {**copy.deepcopy(DEFAULT_CONFIG), **config}
    if cfg["similarity"] not in ("ncc", "mse") or cfg["reg"] not in ("diffusion", "operator"):
        raise ValueError("similarity must be 'ncc'|'mse' and reg 'diffusion'|'operator'")
    if cfg["use_sex"] and cohort.sex is None:
        raise ValueError("use_sex=True but the cohort has no sex")
    if cfg["dice_weight"] > 0 and cohort.labels is None:
        raise ValueError("dice_weight > 0 but the cohort has no labels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg["device"])
    ckpt_path = out_dir / "checkpoint.pt"

    n_labels = int(cohort.labels.max()) + 1 if cfg["dice_weight"] > 0 else 0
    age_mean, age_std = float(cohort.ages.mean()), float(cohort.ages.std() or 1.0)
    attrs = attribute_matrix(cohort.ages, cohort.sex if cfg["use_sex"] else None, age_mean, age_std)
    meta = {
        "shape": list(cohort.shape),
        "disk_shape": list(cohort.disk_shape),
        "affine": np.asarray(cohort.affine).tolist(),
        "age_mean": age_mean,
        "age_std": age_std,
        "age_range": [float(cohort.ages.min()), float(cohort.ages.max())],
        "n_attributes": attrs.shape[1],
        "n_labels": n_labels,
    }

    torch.manual_seed(cfg["seed"])
    base_labels = None
    if n_labels:
        freq = np.stack([(cohort.labels == k).mean(0) for k in range(n_labels)])
        base_labels = np.log(freq + 1e-3)
    model = build_model(cfg, meta, cohort.images.mean(0), base_labels).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    sampler = torch.Generator().manual_seed(cfg["seed"])
    mean_disp = torch.zeros((1, len(cohort.shape), *cohort.shape), device=device)
    history: list[dict] = []
    start = 0

    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        differs = {
            k for k in DEFAULT_CONFIG if ckpt["config"][k] != cfg[k] and k not in RESUMABLE_KEYS
        }
        if differs:
            raise ValueError(f"{ckpt_path} was trained with other {sorted(differs)}")
        if ckpt["meta"] != meta:
            raise ValueError(f"{ckpt_path} was trained on another cohort (grid or ages differ)")
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        sampler.set_state(ckpt["sampler"])
        mean_disp = ckpt["mean_displacement"].to(device)
        history, start = ckpt["history"], ckpt["step"]
        log.info("resuming from %s at step %d", ckpt_path, start)

    images = torch.from_numpy(cohort.images)[:, None]
    attributes = torch.from_numpy(attrs)
    label_maps = torch.from_numpy(cohort.labels.astype(np.int64)) if n_labels else None

    def checkpoint(step):
        state = {
            "step": step,
            "config": cfg,
            "meta": meta,
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "sampler": sampler.get_state(),
            "mean_displacement": mean_disp,
            "history": history,
        }
        _save_atomic(state, ckpt_path)

    model.train()
    tic = time.perf_counter()
    for step in range(start, cfg["steps"]):
        idx = torch.randint(len(images), (cfg["batch_size"],), generator=sampler)
        subject = images[idx].to(device)
        out = model(subject, attributes[idx].to(device))
        warped = out["warped"]
        if cfg["similarity"] == "ncc":
            sim = losses.ncc_loss(warped[:, :1], subject, cfg["ncc_window"])
        else:
            sim = losses.mse_loss(warped[:, :1], subject)
        if cfg["reg"] == "diffusion":
            reg = losses.diffusion_loss(out["velocity"])
        else:
            alpha = losses.reg_alpha(cfg["reg_alpha"], step, cfg["steps"])
            reg = losses.operator_loss(out["velocity"], alpha)
        m = cfg["centrality_momentum"]
        mean_disp_step = m * mean_disp + (1 - m) * out["displacement"].mean(0, keepdim=True)
        central = losses.centrality_loss(mean_disp_step)
        total = sim + cfg["reg_weight"] * reg + cfg["centrality_weight"] * central
        terms = {"similarity": sim, "regularisation": reg, "centrality": central}
        if n_labels:
            target = F.one_hot(label_maps[idx].to(device), n_labels)
            target = target.movedim(-1, 1).float()
            dice = losses.dice_loss(warped[:, 1:], target)
            total = total + cfg["dice_weight"] * dice
            terms["dice"] = dice
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        mean_disp = mean_disp_step.detach()
        record = {"total": total.item(), **{k: v.item() for k, v in terms.items()}}
        history.append(record)
        if on_step is not None:
            on_step(step + 1, record)
        if (step + 1) % cfg["log_every"] == 0 or step + 1 == cfg["steps"]:
            rate = (time.perf_counter() - tic) / (step + 1 - start)
            done = round(20 * (step + 1) / cfg["steps"])
            log.info(
                "[%s] step %d/%d  %s  %.3f s/step  ETA %.0f s",
                "#" * done + "." * (20 - done),
                step + 1,
                cfg["steps"],
                "  ".join(f"{k}={v:.4g}" for k, v in record.items()),
                rate,
                rate * (cfg["steps"] - step - 1),
            )
        if (step + 1) % cfg["checkpoint_every"] == 0:
            checkpoint(step + 1)

    checkpoint(cfg["steps"])
    model_path = out_dir / "model.pt"
    _save_atomic({"config": cfg, "meta": meta, "model": model.state_dict()}, model_path)
    loss_tsv = out_dir / "losses.tsv"
    keys = list(history[0]) if history else []
    rows = ["\t".join(["step", *keys])]
    rows += ["\t".join([str(i + 1), *(f"{h[k]:.6g}" for k in keys)]) for i, h in enumerate(history)]
    loss_tsv.write_text("\n".join(rows) + "\n")
    curve = out_dir / "loss.png"
    _plot_losses(history, curve)
    tail = history[-max(1, math.ceil(len(history) / 10)) :]
    return {
        "model": model_path,
        "checkpoint": ckpt_path,
        "losses": loss_tsv,
        "loss_curve": curve,
        "final_loss": float(np.mean([h["total"] for h in tail])) if tail else float("nan"),
    }
