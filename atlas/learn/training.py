"""Training of the age-conditional deformable template (Dalca et al. 2019, NeurIPS).

:func:`train` is a plain function (no CLI) so that a Snakemake rule or a notebook can call
it; it is resumable: a checkpoint is written atomically every ``checkpoint_every`` steps
and a later call with the same ``out_dir`` continues from it, giving the same result as
an uninterrupted run with the same seed on the same device.

Objective per batch of subjects ``s`` with attributes ``a`` (template = moving image)::

    L = sim(T(a) ∘ φ, s) + λ_reg R(v) + λ_c ||ū||^2 + λ_dice (1 - Dice(T_lab(a) ∘ φ, s_lab))
        + λ_tissue (1 - Dice + CE)(T_tis(a) ∘ φ, s_tis) + w(t) λ_adv L_G(D(T(a) ∘ φ, a))

with ``φ = exp(v)`` (scaling and squaring), ``R`` the diffusion norm ``||∇v||^2`` or
``||(-α Δ + Id) v||^2`` (optionally with a cascade of ``α``), ``ū`` the running mean of
the displacements (centrality) and the Dice term only when label maps are given.

One model family, four variants by two switches (a 2 x 2 design):

* ``tissue_weight > 0``: the template also outputs tissue probability maps (softmax over
  background + tissues) supervised by the soft Dice + cross-entropy with each subject's
  tissue segmentation (:func:`atlas.learn.losses.tissue_loss`; the tissue-guided atlas of
  the anatomy-realistic GAN 4D atlas, Li group).
* ``adversarial``: an age-conditional patch discriminator ``D``
  (:mod:`atlas.learn.discriminator`) judges subjects (real) against the atlas warped to
  them (fake) (Atlas-GAN, Dey et al. 2021, ICCV); ``D`` and the atlas alternate one step
  each per batch in the same loop; ``w(t)`` ramps linearly from 0 over
  ``disc_warmup_steps`` (:func:`atlas.learn.losses.ramp`).

Loss terms logged per variant (:data:`LOSS_TERMS`): ``total``, ``similarity``,
``regularisation``, ``centrality`` always; ``dice`` with ``dice_weight > 0``; ``tissue``
with ``tissue_weight > 0``; ``adversarial`` (atlas), ``discriminator`` and
``gradient_penalty`` (discriminator) with ``adversarial``.
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
from .discriminator import PatchDiscriminator
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
    "tissue_weight": 0.0,  # λ_tissue; > 0 requires cohort tissues, learns tissue maps
    "adversarial": False,  # Atlas-GAN: train an age-conditional patch discriminator
    "adversarial_weight": 0.3,  # λ_adv after the warm-up
    "disc_lr": 2e-4,  # Adam learning rate of the discriminator
    "disc_loss": "lsgan",  # "lsgan" (least squares) or "hinge"
    "disc_penalty": "r1",  # "r1" (real images) or "gp" (WGAN-GP at interpolates)
    "disc_penalty_weight": 1.0,  # weight of the gradient penalty
    "disc_warmup_steps": 500,  # steps of the linear ramp of λ_adv from 0
    "disc_channels": [16, 32, 64],  # discriminator channels (each level halves the grid)
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


def loss_terms(config: dict) -> list[str]:
    """Names of the losses logged per step for ``config`` (missing keys: defaults), in
    log order: the documented terms of each variant (see the module docstring)."""
    cfg = {**DEFAULT_CONFIG, **config}
    terms = ["total", "similarity", "regularisation", "centrality"]
    terms += ["dice"] if cfg["dice_weight"] > 0 else []
    terms += ["tissue"] if cfg["tissue_weight"] > 0 else []
    if cfg["adversarial"]:
        terms += ["adversarial", "discriminator", "gradient_penalty"]
    return terms


class TrainingDiverged(RuntimeError):
    """A loss or gradient of the atlas or the discriminator became NaN/Inf."""


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


def build_model(
    config: dict, meta: dict, base=None, base_labels=None, base_tissues=None
) -> ConditionalAtlas:
    """Instantiate the :class:`ConditionalAtlas` described by ``config`` and ``meta``.

    ``meta`` holds ``shape``, ``n_attributes``, ``n_labels`` and, for a tissue-guided
    atlas, ``tissue_names`` (see :func:`train`); ``base`` / ``base_labels`` /
    ``base_tissues`` initialise the template (zeros when None, e.g. before loading a state
    dict).
    """
    shape = tuple(meta["shape"])
    base = np.zeros(shape, np.float32) if base is None else base
    if base_labels is None and meta["n_labels"]:
        base_labels = np.zeros((meta["n_labels"], *shape), np.float32)
    n_tissues = len(meta.get("tissue_names", [])) + 1 if meta.get("tissue_names") else 0
    if base_tissues is None and n_tissues:
        base_tissues = np.zeros((n_tissues, *shape), np.float32)
    template = ConditionalTemplate(
        shape,
        meta["n_attributes"],
        base,
        base_labels,
        hidden=config["template_hidden"],
        channels=config["template_channels"],
        base_tissues=base_tissues,
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
    if cfg["tissue_weight"] > 0 and cohort.tissues is None:
        raise ValueError("tissue_weight > 0 but the cohort has no tissue segmentations")
    if cfg["disc_loss"] not in losses.ADVERSARIAL_LOSSES or cfg["disc_penalty"] not in ("r1", "gp"):
        raise ValueError("disc_loss must be 'lsgan'|'hinge' and disc_penalty 'r1'|'gp'")
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
    if cfg["tissue_weight"] > 0:
        meta["tissue_names"] = list(cohort.tissue_names)
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
    discriminator: PatchDiscriminator | None = None
    disc_optimiser: torch.optim.Optimizer | None = None
    saved_step: int | None = None

    def save(self, path: Path, cfg: dict, meta: dict, step: int) -> None:
        """Checkpoint of tensors and plain containers only (loadable with ``weights_only``);
        with the discriminator and its optimiser when adversarial."""
        self.saved_step = step
        adversarial = {}
        if self.discriminator is not None:
            adversarial = {
                "discriminator": self.discriminator.state_dict(),
                "disc_optimiser": self.disc_optimiser.state_dict(),
            }
        state = adversarial | {
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
    base_tissues = None
    if meta.get("tissue_names"):
        n_tissues = len(meta["tissue_names"]) + 1
        freq = np.stack([(cohort.tissues == k).mean(0) for k in range(n_tissues)])
        base_tissues = np.log(freq + 1e-3)
    model = build_model(cfg, meta, cohort.images.mean(0), base_labels, base_tissues).to(device)
    state = _State(
        model=model,
        optimiser=torch.optim.Adam(model.parameters(), lr=cfg["lr"]),
        sampler=torch.Generator().manual_seed(cfg["seed"]),
        mean_displacement=torch.zeros((1, len(cohort.shape), *cohort.shape), device=device),
    )
    if cfg["adversarial"]:
        # Input standardised by the training images' mean and std (see PatchDiscriminator).
        images = cohort.images
        disc = PatchDiscriminator(
            len(cohort.shape),
            meta["n_attributes"],
            cfg["disc_channels"],
            shift=float(images.mean()),
            scale=float(images.std() or 1.0),
        )
        state.discriminator = disc.to(device)
        # Adam betas (0.5, 0.999): the usual GAN setting (Radford et al. 2016, DCGAN).
        state.disc_optimiser = torch.optim.Adam(
            disc.parameters(), lr=cfg["disc_lr"], betas=(0.5, 0.999)
        )
    return state


def _resume(state: _State, path: Path, cfg: dict, meta: dict, device) -> None:
    """Load the checkpoint at ``path`` into ``state``.

    Raises
    ------
    ValueError if it was trained with other settings (see :data:`RESUMABLE_KEYS`) or on
    another cohort.
    """
    ckpt = load_checkpoint(path, device)
    old = ckpt["config"]
    changed = {k for k in DEFAULT_CONFIG if old.get(k, DEFAULT_CONFIG[k]) != cfg[k]}
    differs = changed - RESUMABLE_KEYS
    if differs:
        raise ValueError(f"{path} was trained with other {sorted(differs)}")
    if ckpt["meta"] != meta:
        raise ValueError(f"{path} was trained on another cohort (grid or ages differ)")
    state.model.load_state_dict(ckpt["model"])
    state.optimiser.load_state_dict(ckpt["optimiser"])
    state.sampler.set_state(ckpt["sampler"])
    state.mean_displacement = ckpt["mean_displacement"].to(device)
    if state.discriminator is not None:
        state.discriminator.load_state_dict(ckpt["discriminator"])
        state.disc_optimiser.load_state_dict(ckpt["disc_optimiser"])
    state.history, state.step = ckpt["history"], ckpt["step"]
    state.saved_step = state.step
    log.info("resuming from %s at step %d", path, state.step)


def load_checkpoint(path, device="cpu") -> dict:
    """A ``checkpoint.pt`` or ``model.pt`` of :func:`train`, read with ``weights_only=True``:
    a shared model file is data (tensors, numbers, strings, lists, dicts), never code."""
    return torch.load(path, map_location=device, weights_only=True)


def _batch_loss(model, cfg: dict, step: int, batch: dict, mean_disp, discriminator=None):
    """Total loss, its terms, the updated running mean displacement and the model output
    for one batch (``batch``: ``subject``, ``attributes`` and, when learned, one-hot
    ``labels`` / ``tissues`` ``(B, K, *S)``); with ``discriminator`` the ramped adversarial
    term of the atlas (the discriminator's weights get no gradient)."""
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
    n_labels = model.template.n_labels
    if "labels" in batch:
        dice = losses.dice_loss(warped[:, 1 : 1 + n_labels], batch["labels"])
        total = total + cfg["dice_weight"] * dice
        terms["dice"] = dice
    if "tissues" in batch:
        # Soft Dice over the tissues + cross-entropy (calibrated maps; see tissue_loss).
        tissue = losses.tissue_loss(warped[:, 1 + n_labels :], batch["tissues"])
        total = total + cfg["tissue_weight"] * tissue
        terms["tissue"] = tissue
    if discriminator is not None:
        discriminator.requires_grad_(False)
        logits = discriminator(warped[:, :1], batch["attributes"])
        adv = losses.generator_loss(logits, cfg["disc_loss"])
        discriminator.requires_grad_(True)
        weight = cfg["adversarial_weight"] * losses.ramp(step, cfg["disc_warmup_steps"])
        total = total + weight * adv
        terms["adversarial"] = adv
    return total, terms, mean_disp_step, out


def _discriminator_step(state: _State, cfg: dict, batch: dict, fake: torch.Tensor) -> dict:
    """One optimiser step of the discriminator on real ``batch["subject"]`` vs ``fake``
    (the atlas warped to the subjects, detached); returns its terms (0-d tensors).

    Raises
    ------
    TrainingDiverged if its loss or gradient is not finite (before the step is taken).
    """
    disc, real, attrs = state.discriminator, batch["subject"], batch["attributes"]
    adv = losses.discriminator_loss(disc(real, attrs), disc(fake, attrs), cfg["disc_loss"])
    if cfg["disc_penalty"] == "r1":
        penalty = losses.gradient_penalty(disc, real, attrs, target=0.0)
    else:
        shape = (real.shape[0],) + (1,) * (real.dim() - 1)
        eps = torch.rand(shape, generator=state.sampler).to(real.device)
        penalty = losses.gradient_penalty(disc, eps * real + (1 - eps) * fake, attrs, 1.0)
    total = adv + cfg["disc_penalty_weight"] * penalty
    state.disc_optimiser.zero_grad(set_to_none=True)
    _check_finite("discriminator", total)
    total.backward()
    _check_finite("discriminator", total, disc)
    state.disc_optimiser.step()
    return {"discriminator": adv, "gradient_penalty": penalty}


def _check_finite(network: str, loss: torch.Tensor, module=None) -> None:
    """Raise :class:`TrainingDiverged` if ``loss`` or, with ``module``, the gradient norm
    of its parameters (after ``backward``) is NaN/Inf. The loss is checked before
    ``backward`` too: back-propagating NaN sampling coordinates through ``grid_sample`` is
    not safe."""
    grads = [] if module is None else [p.grad for p in module.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else loss
    if not (torch.isfinite(loss) and torch.isfinite(norm)):
        raise TrainingDiverged(
            f"{network} diverged: loss {loss.item():.4g}, gradient norm {norm.item():.4g}"
        )


def _step(state: _State, cfg: dict, step: int, batch: dict) -> dict:
    """One training step (atlas, then discriminator when adversarial) on ``batch``;
    returns the logged losses (floats, :func:`loss_terms` order).

    Raises
    ------
    TrainingDiverged if a loss or gradient of either network is NaN/Inf; no weight is
    updated by the failing network's step.
    """
    total, terms, mean_disp, out = _batch_loss(
        state.model, cfg, step, batch, state.mean_displacement, state.discriminator
    )
    state.optimiser.zero_grad(set_to_none=True)
    _check_finite("atlas (generator)", total)
    total.backward()
    _check_finite("atlas (generator)", total, state.model)
    state.optimiser.step()
    state.mean_displacement = mean_disp.detach()
    if state.discriminator is not None:
        fake = out["warped"][:, :1].detach()
        terms |= _discriminator_step(state, cfg, batch, fake)
    return {"total": total.item(), **{k: v.item() for k, v in terms.items()}}


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
    maps = {}
    if meta["n_labels"]:
        maps["labels"] = (torch.from_numpy(cohort.labels.astype(np.int64)), meta["n_labels"])
    if meta.get("tissue_names"):
        n_tissues = len(meta["tissue_names"]) + 1
        maps["tissues"] = (torch.from_numpy(cohort.tissues.astype(np.int64)), n_tissues)
    state.model.train()
    start, tic = state.step, time.perf_counter()
    for step in range(start, cfg["steps"]):
        idx = torch.randint(len(images), (cfg["batch_size"],), generator=state.sampler)
        batch = {"subject": images[idx].to(device), "attributes": attributes[idx].to(device)}
        for key, (array, n) in maps.items():
            batch[key] = F.one_hot(array[idx].to(device), n).movedim(-1, 1).float()
        try:
            record = _step(state, cfg, step, batch)
        except TrainingDiverged as exc:
            kept = f"{ckpt_path} (step {state.saved_step})" if state.saved_step else "none"
            raise TrainingDiverged(
                f"training stopped at step {step + 1}: {exc}. Last good checkpoint kept: "
                f"{kept}; lower the learning rates or lengthen the adversarial warm-up "
                "(train.lr, disc_lr, disc_warmup_steps) and rerun to resume"
            ) from exc
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
