"""Adversarial (Atlas-GAN) and tissue-guided variants of atlas.learn (issue 13), on tiny data."""

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from test_learn_train import TINY, blob_cohort

from atlas.learn import LearnedAtlas, export_templateflow, losses, montage
from atlas.learn.data import tissue_lookup
from atlas.learn.discriminator import PatchDiscriminator
from atlas.learn.evaluation import tissue_dice
from atlas.learn.networks import ConditionalTemplate
from atlas.learn.training import TrainingDiverged, loss_terms, train

torch.set_num_threads(1)
GAN = {"disc_channels": [4, 8], "disc_warmup_steps": 2}
VARIANTS = {
    "conditional": {},
    "conditional+tissue": {"tissue_weight": 1.0},
    "atlas-gan": {"adversarial": True},
    "gan+tissue": {"adversarial": True, "tissue_weight": 1.0},
}
BASE_TERMS = ["total", "similarity", "regularisation", "centrality"]
GAN_TERMS = ["adversarial", "discriminator", "gradient_penalty"]


def tissue_cohort(n=4):
    """Blobs whose inside is 'WM' (1) with a 'CSF' (2) core growing with age."""
    cohort = blob_cohort(n=n)
    core = np.stack([np.roll(lab, 0) for lab in cohort.labels]).astype(np.int16)
    grid = np.mgrid[:24, :28]
    for i, age in enumerate(cohort.ages):
        r = 1.5 + 2 * (age - 20) / 60
        core[i][((grid[0] - 11.5) ** 2 + (grid[1] - 13.5) ** 2 < r * r) & (core[i] > 0)] = 2
    cohort.tissues, cohort.tissue_names = core, ["WM", "CSF"]
    return cohort


@pytest.mark.parametrize(
    "ndim,shape,patches", [(2, (40, 48), (5, 6)), (3, (16, 20, 24), (2, 3, 3))]
)
def test_discriminator_patch_shape_and_age_conditioning(ndim, shape, patches):
    torch.manual_seed(0)
    disc = PatchDiscriminator(ndim, 1, (8, 16, 16)).eval()
    x = torch.rand(2, 1, *shape)
    young, old = disc(x, torch.full((2, 1), -1.0)), disc(x, torch.full((2, 1), 1.0))
    assert young.shape == (2, 1, *patches)
    # Projection term <V y, h>: another age gives other logits for the same images.
    assert (young - old).abs().mean() > 1e-4
    assert torch.equal(disc(x, torch.full((2, 1), -1.0)), young)  # deterministic in eval


def test_discriminator_weights_are_spectrally_normalised():
    torch.manual_seed(0)
    disc = PatchDiscriminator(2, 1, (8, 16)).train()
    for _ in range(30):  # power iterations run in training forwards
        disc(torch.rand(1, 1, 16, 16), torch.zeros(1, 1))
    weight = disc.features[1].weight.flatten(1)
    assert torch.linalg.matrix_norm(weight, 2).item() == pytest.approx(1.0, abs=0.05)


class LinearCritic(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x, attributes):
        return (x.flatten(1) * self.w.flatten()).sum(1, keepdim=True)


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_gradient_penalty_of_a_linear_critic(target):
    """∇_x <w, x> = w everywhere, so the penalty is (||w|| - target)^2 at any points."""
    w = torch.arange(12.0).reshape(1, 1, 3, 4) / 10
    points = torch.randn(5, 1, 3, 4)
    value = losses.gradient_penalty(LinearCritic(w), points, torch.zeros(5, 1), target)
    assert value.item() == pytest.approx((w.norm().item() - target) ** 2, rel=1e-6)


def test_adversarial_losses_known_values():
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert losses.discriminator_loss(real, fake, "lsgan").item() == pytest.approx(0.5 + 2.0)
    assert losses.generator_loss(fake, "lsgan").item() == pytest.approx((1 + 1) / 2)
    assert losses.discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5 + 2.0)
    assert losses.generator_loss(fake, "hinge").item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="lsgan"):
        losses.generator_loss(fake, "wgan")
    assert [losses.ramp(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert losses.ramp(0, 0) == 1.0


def test_tissue_maps_are_probabilities():
    torch.manual_seed(0)
    logits = np.random.default_rng(0).normal(size=(4, 12, 10))
    tpl = ConditionalTemplate((12, 10), 1, np.zeros((12, 10)), base_tissues=logits, channels=4)
    torch.nn.init.normal_(tpl.head.weight, 0, 1.0)  # a non-trivial age-dependent residual
    out = tpl(torch.tensor([[-1.0], [2.0]]))
    assert out.shape == (2, 1 + 4, 12, 10)
    maps = out[:, 1:]
    assert maps.min() >= 0
    torch.testing.assert_close(maps.sum(1), torch.ones(2, 12, 10))
    assert (maps[0] - maps[1]).abs().max() > 1e-3  # the maps depend on age


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_logs_exactly_its_loss_terms(variant, tmp_path):
    config = {**TINY, **GAN, "steps": 2, **VARIANTS[variant]}
    expected = BASE_TERMS + ["tissue"] * ("tissue" in variant) + GAN_TERMS * ("gan" in variant)
    assert loss_terms(config) == expected
    result = train(config, tissue_cohort(), tmp_path)
    table = pd.read_csv(result["losses"], sep="\t")
    assert list(table.columns) == ["step", *expected]
    assert np.isfinite(table[expected].to_numpy()).all()
    ckpt = torch.load(result["checkpoint"], weights_only=True)
    assert ("discriminator" in ckpt) == ("gan" in variant)
    assert ("disc_optimiser" in ckpt) == ("gan" in variant)


def test_adversarial_resume_equals_uninterrupted(tmp_path):
    """The checkpoint holds the discriminator, its optimiser and spectral-norm vectors."""
    cohort = tissue_cohort()
    config = {**TINY, **GAN, **VARIANTS["gan+tissue"], "steps": 4, "checkpoint_every": 2}
    train(config, cohort, tmp_path / "straight")
    train({**config, "steps": 2}, cohort, tmp_path / "resumed")
    train(config, cohort, tmp_path / "resumed")
    a = (tmp_path / "straight" / "losses.tsv").read_text()
    assert a == (tmp_path / "resumed" / "losses.tsv").read_text()
    sa = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    sb = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    for key, value in sa["discriminator"].items():
        assert torch.equal(value, sb["discriminator"][key]), key


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    cohort = tissue_cohort()
    config = {**TINY, **GAN, **VARIANTS["atlas-gan"], "steps": 2, "checkpoint_every": 2}
    train(config, cohort, tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in ("checkpoint.pt", "model.pt")}
    cohort.images[:] = np.nan  # e.g. a corrupt image: the losses become NaN
    with pytest.raises(TrainingDiverged, match=r"step 3: .*diverged.*step 2\)"):
        train({**config, "steps": 4}, cohort, tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in before} == before


def test_settings_need_tissues_and_known_gan_losses(tmp_path):
    cohort = blob_cohort()
    with pytest.raises(ValueError, match="tissue"):
        train({**TINY, "steps": 1, "tissue_weight": 1.0}, cohort, tmp_path)
    with pytest.raises(ValueError, match="disc_loss"):
        train({**TINY, "steps": 1, "adversarial": True, "disc_loss": "wgan"}, cohort, tmp_path)


@pytest.fixture(scope="module")
def tissue_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tissue")
    train({**TINY, **GAN, **VARIANTS["gan+tissue"], "steps": 3}, tissue_cohort(), out)
    return out / "model.pt"


def test_templateflow_export_of_tissue_maps(tissue_model, tmp_path):
    root = export_templateflow(tissue_model, [20, 80], tmp_path, "Blob")
    stem = root / "cohort-2" / "tpl-Blob_cohort-2_res-1"
    probs = [nib.load(f"{stem}_label-{t}_probseg.nii.gz").get_fdata() for t in ("WM", "CSF")]
    dseg = np.asarray(nib.load(f"{stem}_dseg.nii.gz").dataobj)
    assert probs[0].shape == dseg.shape == (24, 28, 1)
    assert min(p.min() for p in probs) >= 0 and (probs[0] + probs[1]).max() <= 1 + 1e-6
    assert set(np.unique(dseg)) <= {0, 1, 2}
    table = pd.read_csv(root / "tpl-Blob_dseg.tsv", sep="\t")
    assert table.to_dict("list") == {"index": [1, 2], "name": ["WM", "CSF"]}
    atlas = LearnedAtlas(tissue_model)
    maps = atlas.tissue_maps([20, 80])
    np.testing.assert_array_equal(dseg[..., 0], maps[1].argmax(0))
    reg = atlas.register(tissue_cohort().images[0], 20)
    assert reg.warped_tissues.shape == (3, 24, 28)
    png = montage(atlas, [20, 50, 80], tmp_path / "m.png")
    assert png.stat().st_size > 1000


def test_tissue_lookup_by_name_and_by_class():
    seg4 = pd.DataFrame(
        {
            "index": [1, 2, 3, 4],
            "name": ["Cortex", "Subcortical-Gray-Matter", "White-Matter", "CSF"],
        }
    )
    lookup, names = tissue_lookup(seg4)
    assert names == ["GM", "SGM", "WM", "CSF"] and lookup.tolist() == [0, 1, 2, 3, 4]
    classed = pd.DataFrame(
        {"index": [2, 5, 7], "name": ["a", "b", "c"], "class": ["WM", "n/a", "GM"]}
    )
    lookup, names = tissue_lookup(classed)
    assert names == ["GM", "WM"] and lookup.tolist() == [0, 0, 2, 0, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="class column"):
        tissue_lookup(pd.DataFrame({"index": [1], "name": ["Hippocampus"]}))


def test_tissue_dice_known_values():
    atlas = np.array([[1, 1, 2, 0], [3, 3, 0, 0]])
    subject = np.array([[1, 2, 2, 0], [3, 0, 0, 0]])
    scores = tissue_dice(atlas, subject, ["WM", "GM", "CSF"])
    assert scores == pytest.approx({"dice_WM": 2 / 3, "dice_GM": 2 / 3, "dice_CSF": 2 / 3})
    assert math.isclose(tissue_dice(atlas, atlas, ["WM", "GM", "CSF"])["dice_GM"], 1.0)
    with pytest.raises(ValueError, match="CSF"):
        tissue_dice(atlas, subject, ["WM", "GM"])


def test_discriminator_standardises_its_input():
    """D with (shift, scale) on x equals the same weights without on (x - shift) / scale."""
    torch.manual_seed(0)
    plain = PatchDiscriminator(2, 1, (4, 8)).eval()
    scaled = PatchDiscriminator(2, 1, (4, 8), shift=0.2, scale=0.1).eval()
    scaled.load_state_dict(plain.state_dict() | {"shift": scaled.shift, "scale": scaled.scale})
    x, y = torch.rand(2, 1, 16, 20), torch.zeros(2, 1)
    torch.testing.assert_close(scaled(0.2 + 0.1 * x, y), plain(x, y))
    assert set(scaled.state_dict()) >= {"shift", "scale"}  # saved with the weights


def test_adversarial_gradient_reaches_the_atlas_through_the_warp(tmp_path):
    """Atlas-GAN's fake is the atlas warped to the subject: the generator loss moves the
    template image and the registration network, never the discriminator."""
    from atlas.learn.training import _batch_loss, _initial_state, cohort_meta, settings

    cohort = tissue_cohort()
    cfg = settings({**TINY, **GAN, "adversarial": True, "disc_warmup_steps": 0}, cohort)
    meta, attrs = cohort_meta(cohort, cfg)
    state = _initial_state(cfg, meta, cohort, torch.device("cpu"))
    batch = {
        "subject": torch.from_numpy(cohort.images)[:, None],
        "attributes": torch.from_numpy(attrs),
    }
    _, terms, _, _ = _batch_loss(
        state.model, cfg, 0, batch, state.mean_displacement, state.discriminator
    )
    terms["adversarial"].backward()
    assert state.model.template.base.grad.abs().sum() > 0
    assert state.model.registration.flow.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in state.discriminator.parameters())


def test_tissue_loss_is_minimised_by_the_tissue_posterior():
    """Boundary voxels that are WM with probability 0.6 next to a large WM and a small CSF
    region: Dice + cross-entropy is minimised near the posterior 0.6 (the cross-entropy is
    a proper scoring rule), the soft Dice alone by a saturated map (its argmax is biased)."""
    n_wm, n_csf, n_edge = 400, 40, 50
    target = torch.zeros(1, 3, n_wm + n_csf + n_edge)  # background, WM, CSF
    target[0, 1, :n_wm] = target[0, 2, n_wm : n_wm + n_csf] = 1
    edge = slice(n_wm + n_csf, None)
    target[0, 1, n_wm + n_csf : n_wm + n_csf + 30] = 1  # 30 / 50 edge voxels are WM
    target[0, 2, n_wm + n_csf + 30 :] = 1
    grid = torch.linspace(0.0, 1.0, 101)

    def pred(p):
        x = target.clone()
        x[0, 1, edge], x[0, 2, edge] = p, 1 - p
        return x

    compound = torch.stack([losses.tissue_loss(pred(p), target) for p in grid])
    dice = torch.stack([losses.dice_loss(pred(p)[:, 1:], target[:, 1:]) for p in grid])
    assert abs(grid[compound.argmin()].item() - 0.6) <= 0.05
    assert grid[dice.argmin()].item() in (0.0, 1.0)
    perfect = losses.tissue_loss(target, target).item()
    assert perfect == pytest.approx(0.0, abs=1e-5)
