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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import io, qc
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


def settings(config: dict, cohort: Cohort) -> dict:
    """:data:`DEFAULT_CONFIG` updated by ``config``, checked against the cohort.

    Raises
    ------
    ValueError for unknown keys or values, or a cohort without the sex or labels that
    ``use_sex`` / ``dice_weight > 0`` ask for.
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
    return cfg


def cohort_meta(cohort: Cohort, cfg: dict) -> tuple[dict, np.ndarray]:
    """Model metadata (grid, age statistics, attribute and label counts; plain numbers and
    lists, saved with the model) and the ``(N, n_attributes)`` training attributes."""
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
    return meta, attrs


@dataclass
class _State:
    """Everything a checkpoint holds besides config and metadata."""

    model: ConditionalAtlas
    optimiser: torch.optim.Optimizer
    sampler: torch.Generator
    mean_displacement: torch.Tensor
    history: list = field(default_factory=list)
    step: int = 0

    def save(self, path: Path, cfg: dict, meta: dict, step: int) -> None:
        """Checkpoint of tensors and plain containers only (loadable with ``weights_only``)."""
        state = {
            "step": step,
            "config": cfg,
            "meta": meta,
            "model": self.model.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "sampler": self.sampler.get_state(),
            "mean_displacement": self.mean_displacement,
            "history": self.history,
        }
        io.write_torch(state, path)


def _initial_state(cfg: dict, meta: dict, cohort: Cohort, device) -> _State:
    torch.manual_seed(cfg["seed"])
    base_labels = None
    if meta["n_labels"]:
        freq = np.stack([(cohort.labels == k).mean(0) for k in range(meta["n_labels"])])
        base_labels = np.log(freq + 1e-3)
    model = build_model(cfg, meta, cohort.images.mean(0), base_labels).to(device)
    return _State(
        model=model,
        optimiser=torch.optim.Adam(model.parameters(), lr=cfg["lr"]),
        sampler=torch.Generator().manual_seed(cfg["seed"]),
        mean_displacement=torch.zeros((1, len(cohort.shape), *cohort.shape), device=device),
    )


def _resume(state: _State, path: Path, cfg: dict, meta: dict, device) -> None:
    """Load the checkpoint at ``path`` into ``state``.

    Raises
    ------
    ValueError if it was trained with other settings (see :data:`RESUMABLE_KEYS`) or on
    another cohort.
    """
    ckpt = load_checkpoint(path, device)
    differs = {k for k in DEFAULT_CONFIG if ckpt["config"][k] != cfg[k] and k not in RESUMABLE_KEYS}
    if differs:
        raise ValueError(f"{path} was trained with other {sorted(differs)}")
    if ckpt["meta"] != meta:
        raise ValueError(f"{path} was trained on another cohort (grid or ages differ)")
    state.model.load_state_dict(ckpt["model"])
    state.optimiser.load_state_dict(ckpt["optimiser"])
    state.sampler.set_state(ckpt["sampler"])
    state.mean_displacement = ckpt["mean_displacement"].to(device)
    state.history, state.step = ckpt["history"], ckpt["step"]
    log.info("resuming from %s at step %d", path, state.step)


def load_checkpoint(path, device="cpu") -> dict:
    """A ``checkpoint.pt`` or ``model.pt`` of :func:`train`, read with ``weights_only=True``:
    a shared model file is data (tensors, numbers, strings, lists, dicts), never code."""
    return torch.load(path, map_location=device, weights_only=True)


def _batch_loss(model, cfg: dict, step: int, batch: dict, mean_disp: torch.Tensor):
    """Total loss, its terms and the updated running mean displacement for one batch
    (``batch``: ``subject``, ``attributes`` and, when learning labels, one-hot ``labels``)."""
    subject = batch["subject"]
    out = model(subject, batch["attributes"])
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
    if "labels" in batch:
        dice = losses.dice_loss(warped[:, 1:], batch["labels"])
        total = total + cfg["dice_weight"] * dice
        terms["dice"] = dice
    return total, terms, mean_disp_step


def progress_line(step: int, steps: int, start: int, elapsed: float, record: dict) -> str:
    """A log line with a tqdm meter (bar, elapsed<remaining, rate) and the step's losses;
    ``start`` is the step training (re)started from, so the rate is this call's."""
    meter = tqdm.format_meter(
        step,
        steps,
        elapsed,
        ascii=True,
        unit="step",
        initial=start,
        bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )
    return meter + "  " + "  ".join(f"{k}={v:.4g}" for k, v in record.items())


def _publish(out_dir: Path, cfg: dict, meta: dict, state: _State) -> dict:
    """Write ``model.pt``, ``losses.tsv`` and ``loss.png``; return the result of :func:`train`."""
    model_path = out_dir / "model.pt"
    io.write_torch({"config": cfg, "meta": meta, "model": state.model.state_dict()}, model_path)
    history = state.history
    keys = list(history[0]) if history else []
    table = pd.DataFrame({k: [f"{h[k]:.6g}" for h in history] for k in keys})
    table.insert(0, "step", range(1, len(history) + 1))
    io.write_tsv(table, out_dir / "losses.tsv")
    io.save_figure(qc.plot_losses(history), out_dir / "loss.png")
    tail = history[-max(1, math.ceil(len(history) / 10)) :]
    return {
        "model": model_path,
        "checkpoint": out_dir / "checkpoint.pt",
        "losses": out_dir / "losses.tsv",
        "loss_curve": out_dir / "loss.png",
        "final_loss": float(np.mean([h["total"] for h in tail])) if tail else float("nan"),
    }


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
        config and metadata; input of :mod:`atlas.learn.inference`), ``losses.tsv`` and
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
    cfg = settings(config, cohort)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg["device"])
    ckpt_path = out_dir / "checkpoint.pt"
    meta, attrs = cohort_meta(cohort, cfg)
    state = _initial_state(cfg, meta, cohort, device)
    if ckpt_path.exists():
        _resume(state, ckpt_path, cfg, meta, device)

    images = torch.from_numpy(cohort.images)[:, None]
    attributes = torch.from_numpy(attrs)
    n_labels = meta["n_labels"]
    label_maps = torch.from_numpy(cohort.labels.astype(np.int64)) if n_labels else None
    state.model.train()
    start, tic = state.step, time.perf_counter()
    for step in range(start, cfg["steps"]):
        idx = torch.randint(len(images), (cfg["batch_size"],), generator=state.sampler)
        batch = {"subject": images[idx].to(device), "attributes": attributes[idx].to(device)}
        if n_labels:
            target = F.one_hot(label_maps[idx].to(device), n_labels)
            batch["labels"] = target.movedim(-1, 1).float()
        total, terms, mean_disp = _batch_loss(
            state.model, cfg, step, batch, state.mean_displacement
        )
        state.optimiser.zero_grad(set_to_none=True)
        total.backward()
        state.optimiser.step()
        state.mean_displacement = mean_disp.detach()
        record = {"total": total.item(), **{k: v.item() for k, v in terms.items()}}
        state.history.append(record)
        if on_step is not None:
            on_step(step + 1, record)
        if (step + 1) % cfg["log_every"] == 0 or step + 1 == cfg["steps"]:
            elapsed = time.perf_counter() - tic
            log.info("%s", progress_line(step + 1, cfg["steps"], start, elapsed, record))
        if (step + 1) % cfg["checkpoint_every"] == 0:
            state.save(ckpt_path, cfg, meta, step + 1)
    state.save(ckpt_path, cfg, meta, cfg["steps"])
    return _publish(out_dir, cfg, meta, state)
