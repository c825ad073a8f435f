"""The study registry: every study the CLI can run, each one entry."""

from __future__ import annotations

from study.studies.defaults import SMOKE_SETTINGS as SMOKE
from study.studies.spec import Bundles, Choice, LogUniform, Study, Tied, Uniform

STUDIES: dict[str, Study] = {}

# the DDPM both diffusion studies train on 8x8 digits, and its smoke size
DIGITS_DDPM = {"epochs": 200, "channels": 16, "batch_size": 64, "T": 1000, "lr": 1e-3}
DIGITS_DDPM_SMOKE = {**SMOKE, "eval_samples": 100, "channels": 8, "T": 100}


def register(study: Study) -> Study:
    STUDIES[study.name] = study
    return study


register(
    Study(
        name="gan_stability",
        description="GAN learning rates, losses and stabilisers on mnist5k: which settings "
        "train stably, which collapse or diverge, over seeds",
        family="gan",
        dataset="mnist5k",
        metric="fid",
        mode="min",
        # Lucic et al. 2018's two phases, sized for a 2-core CPU: a wide search of
        # 8 configurations x 2 seeds x 12 epochs, then its best 2 on 3 fresh seeds
        # (the winners are the slow DCGANs: 2 x 3 costs as much as 8 x 1 of the search).
        axes={
            "lr_g": LogUniform(1e-5, 1e-2),
            "lr_d": LogUniform(1e-5, 1e-2),
            "beta1": Uniform(0.0, 0.9),
            "loss": Choice(("ns", "minimax", "hinge", "lsgan", "wgan_gp")),
            "n_disc": Choice((1, 2)),
            "replay": Choice((False, True)),
            "mbstd": Choice((False, True)),
            "arch": Choice(("mlp", "dcgan")),
        },
        fixed={"epochs": 12, "eval_every": 4, "channels": 16, "width": 256},
        num_samples=8,
        seeds=2,
        confirm=2,
        confirm_seeds=3,
        smoke={**SMOKE, "channels": 8, "width": 64},
        table_metrics=("fid", "modes_covered", "mode_kl"),
    )
)


# The chapters' ladder of GAN techniques, each switched on alone over DCGAN
# with the non-saturating loss and Adam (beta1 0.5)
TECHNIQUES = Bundles(
    {
        "baseline": {},
        "nadam": {"optimizer": "nadam"},
        "rmsprop": {"optimizer": "rmsprop"},
        "equalized_lr": {"equalized_lr": True},
        "pixelnorm": {"pixelnorm": True},
        "progressive": {"progressive": True},
        "style": {"arch": "style"},
        "mbdisc": {"mbdisc": True},
        "conditional": {"conditional": True},
    }
)

register(
    Study(
        name="gan_stabilisers",
        description="which GAN technique widens the stable learning-rate range on mnist5k: "
        "optimisers, ProGAN's pieces, a StyleGAN generator, minibatch discrimination, "
        "conditioning; each over 4 learning rates x 2 seeds",
        family="gan",
        dataset="mnist5k",
        metric="fid",
        mode="min",
        axes={
            "technique": TECHNIQUES,
            # G and D equal, 3e-4..3e-2 log-spaced. Measured at 250 steps: below
            # 3e-4 nothing has learned yet (every technique "collapsed" at 1e-4),
            # equalized LR needs 1e-2, and 3e-2 splits the baseline's seeds
            "lr": Tied(("lr_g", "lr_d"), (3e-4, 1.4e-3, 6.5e-3, 3e-2)),
        },
        # 8 epochs of 2000 images (250 steps) keep 72 trials within 20 minutes
        # on 2 cores; growing: 7x7 for 2 epochs, 14x14 (fading in over 1) for 2,
        # then 28x28 from epoch 4
        fixed={
            "arch": "dcgan",
            "epochs": 8,
            "eval_every": 4,
            "train_size": 2000,
            "channels": 16,
            "loss": "ns",
            "stage_epochs": 2,
            "fade_epochs": 1,
        },
        num_samples=36,
        seeds=2,
        search="grid",
        smoke={**SMOKE, "channels": 8, "stage_epochs": 1},
        table_metrics=("fid", "modes_covered", "class_accuracy"),
        group_by="technique",
    )
)


# The chapter's and BigGAN's collapse as an event in time: an mlp GAN on
# mnist5k from stable to collapsing learning rates, an evaluation every epoch.
# Measured on 3 seeds (4000 images, batch 32, 8 epochs): at 1e-3 and 4e-3
# every seed climbs to 8-10 classes and stays; at 1.6e-2 seeds reach 5-7
# classes, then fall to 1-3 and hop; at 5e-2 none learns at all. 8 epochs of
# the 48 trials took 8 min on 2 cores; 12 give collapse more time to come.
# an mlp GAN on mnist5k judged at every epoch: gan_collapse's and gan_replay's
OVER_TIME = {
    "arch": "mlp",
    "width": 256,
    "batch_size": 32,
    "train_size": 4000,
    "epochs": 12,
    "eval_every": 1,
    "eval_samples": 500,
}

register(
    Study(
        name="gan_collapse",
        description="when GANs collapse during training: mlp GANs on mnist5k from stable to "
        "collapsing learning rates, two losses, with and without minibatch stddev, "
        "judged at every epoch over 3 seeds (survival, hopping, early warning)",
        family="gan",
        dataset="mnist5k",
        metric="fid",
        mode="min",
        axes={
            "lr": Tied(("lr_g", "lr_d"), (1e-3, 4e-3, 1e-2, 2.5e-2)),
            "loss": Choice(("ns", "lsgan")),
            "mbstd": Choice((False, True)),
        },
        fixed=OVER_TIME,
        num_samples=16,
        seeds=3,
        confirm=0,
        search="grid",
        smoke={**SMOKE, "width": 64, "batch_size": 64},
        table_metrics=("fid", "modes_covered", "mode_jsd"),
        group_by="lr",
    )
)


register(
    Study(
        name="gan_modes",
        description="PacGAN packing (pac 1, 2, 4) on the 2-D ring or grid mixture: modes "
        "captured, high-quality share and reverse KL over seeds",
        family="gan",
        dataset="ring",
        metric="reverse_kl",
        mode="min",
        axes={"pac": Choice((1, 2, 4))},
        # PacGAN's protocol (batch 100, Adam 1e-4, beta1 0.8, z ~ N(0, I_2), 2,500
        # scored samples) but 10 epochs of its 100k points (10k steps) instead of
        # 400 and 128 hidden units instead of 400, so 3 x 5 trials take minutes
        # on a CPU; see the README for what that changes
        fixed={
            "epochs": 10,
            "eval_every": 5,
            "eval_samples": 2500,
            "batch_size": 100,
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "beta1": 0.8,
            "z_dim": 2,
            "width": 128,
            "loss": "ns",
            "arch": "mlp",
        },
        num_samples=3,
        seeds=5,
        search="grid",
        smoke={**SMOKE, "eval_samples": 500, "width": 64},
        table_metrics=("modes_captured", "hq_fraction", "reverse_kl"),
    )
)


register(
    Study(
        name="sparse_ae",
        description="sparse autoencoders on mnist5k: L1 or KL sparsity penalty, its weight, "
        "the target sparsity and the coding size vs reconstruction and achieved sparsity",
        family="autoencoder",
        dataset="mnist5k",
        metric="recon_mse",
        mode="min",
        axes={
            "penalty": Choice(("l1", "kl")),
            "sparsity_weight": LogUniform(1e-5, 1e-1),
            "target_sparsity": Uniform(0.02, 0.3),
            "coding": Choice((32, 64, 128)),
        },
        # random search spreads the weights over all five decades
        fixed={"epochs": 20, "eval_every": 5},
        num_samples=16,
        seeds=2,
        search="random",
        smoke=SMOKE,
        table_metrics=("recon_mse", "sparsity", "active_fraction"),
    )
)


register(
    Study(
        name="denoising_ae",
        description="denoising autoencoders on mnist5k: Gaussian noise or input dropout, "
        "its level and the architecture (stacked, tied, conv) vs held-out reconstruction",
        family="autoencoder",
        dataset="mnist5k",
        metric="recon_mse",
        mode="min",
        axes={
            "noise": Choice(("gaussian", "dropout")),
            "noise_level": Uniform(0.1, 0.5),
            "arch": Choice(("mlp", "tied", "conv")),
        },
        fixed={"epochs": 20, "eval_every": 5, "width": 64},
        num_samples=18,
        seeds=2,
        search="grid",
        smoke=SMOKE,
        table_metrics=("recon_mse", "denoise_mse", "recon_mse_train"),
    )
)


register(
    Study(
        name="vae_kl",
        description="VAE KL weight (beta) and its schedule (constant, linear warm-up, "
        "cyclical) on mnist5k: reconstruction, KL, active units and sample fid",
        family="vae",
        dataset="mnist5k",
        metric="fid",
        mode="min",
        axes={
            "kl_weight": LogUniform(0.01, 10.0),
            "schedule": Choice(("constant", "linear", "cyclical")),
            "warmup_epochs": Uniform(1.0, 10.0),
            "latent": Choice((8, 16, 32)),
        },
        # 50 epochs: at kl_weight near 10 the unused latents are still collapsing
        # at epoch 20 (posterior-mean variance 0.02-0.08, just above the 0.01
        # bar) and are inactive by epoch 50 (measured)
        fixed={"epochs": 50, "eval_every": 10},
        num_samples=16,
        seeds=2,
        search="random",
        smoke=SMOKE,
        table_metrics=("fid", "recon_mse", "kl", "active_units", "path_length", "probe_accuracy"),
    )
)


register(
    Study(
        name="dvae_temperature",
        description="Gumbel-softmax VAE temperature annealing (constant, linear, "
        "exponential) on mnist5k: reconstruction, code use and sample fid",
        family="dvae",
        dataset="mnist5k",
        metric="fid",
        mode="min",
        axes={
            "schedule": Choice(("constant", "linear", "exponential")),
            "tau0": Uniform(0.5, 2.0),
            "tau_min": Uniform(0.1, 0.5),
            "rate": LogUniform(1e-4, 1e-2),
            "k": Choice((4, 10, 32)),
            "d": Choice((10, 20, 30)),
        },
        # Jang et al. update every 1000 of 100k+ steps; 20 epochs here are 620
        # steps, so updates every 100 and rates up to 1e-2 to reach tau_min
        # a learned prior over the codes after training (5 passes, about 7 s):
        # fid_prior beside fid, the uniform prior's
        fixed={
            "epochs": 20,
            "eval_every": 5,
            "anneal_epochs": 20.0,
            "anneal_every": 100,
            "prior_epochs": 5,
        },  # fmt: skip
        num_samples=18,
        seeds=2,
        search="random",
        smoke={**SMOKE, "anneal_epochs": 2.0, "prior_epochs": 1},
        table_metrics=("fid", "fid_prior", "recon_mse", "code_perplexity", "kl"),
    )
)


register(
    Study(
        name="diffusion_schedule",
        description="DDPM noise schedules (linear, cosine, sigmoid) on 8x8 digits, each "
        "sampled with DDIM at 10, 20 and 50 steps and eta 0 or 1: fid and sampling time",
        family="diffusion",
        dataset="digits",
        metric="fid",
        mode="min",
        # schedules side by side; --sweep T=..., loss=..., lr=... widens the grid
        axes={"schedule": Choice(("linear", "cosine", "sigmoid"))},
        fixed={
            **DIGITS_DDPM,
            # each evaluation samples 1000 images four times (about 19 s):
            # two of them keep the study within 20 minutes on 2 cores
            "eval_every": 100,
            "loss": "mse",
        },
        num_samples=3,
        seeds=2,
        search="grid",
        smoke={**DIGITS_DDPM_SMOKE, "samplers": "ddim5_eta0,ddim10_eta1"},
        table_metrics=("fid", "fid_ddim10_eta0", "fid_ddim20_eta0", "fid_ddim20_eta1"),
    )
)


register(
    Study(
        name="vq_codebook",
        description="VQ-VAE codebooks on mnist5k: codebook loss or EMA updates, dead-code "
        "restarts, codebook size and commitment weight vs codes in use and reconstruction",
        family="vqvae",
        dataset="mnist5k",
        metric="recon_mse",
        mode="min",
        axes={
            "codebook_update": Choice(("loss", "ema")),
            "restart_dead": Choice((False, True)),
            "codebook_size": Choice((16, 64, 256)),
            "commitment": Choice((0.25, 1.0)),
        },
        # a learned prior over the code grids after training (5 passes, about
        # 12 s): fid_prior beside fid, the per-position histogram's
        fixed={"epochs": 10, "eval_every": 5, "prior_epochs": 5},
        num_samples=24,
        seeds=2,
        search="grid",
        smoke={**SMOKE, "prior_epochs": 1},
        table_metrics=(
            "recon_mse",
            "codebook_perplexity",
            "dead_codes",
            "probe_accuracy",
            "path_length",
            "fid",
            "fid_prior",
            "prior_nll",
        ),
    )
)


register(
    Study(
        name="diffusion_guidance",
        description="class-conditional DDPM on 8x8 digits with classifier-free guidance: "
        "label dropout vs fid, recall and class accuracy at guidance scales w = 0, 1, 3 "
        "(and -1, the unconditional model), and the sigma^2 = beta sampler",
        family="diffusion",
        dataset="digits",
        metric="fid",
        mode="min",
        axes={"cond_drop": Choice((0.1, 0.2))},
        fixed={
            **DIGITS_DDPM,
            "eval_every": 200,  # one evaluation: six samplers of 1000 images
            "conditional": True,
            "samplers": "ddim20_eta0_w0,ddim20_eta0_w1,ddim20_eta0_w3,ddim20_eta0_w-1,"
            "ddim100_eta1,ddpm100_beta",
        },
        num_samples=2,
        seeds=2,
        search="grid",
        smoke={**DIGITS_DDPM_SMOKE, "samplers": "ddim5_eta0_w0,ddim5_eta0_w3,ddpm10_beta"},
        table_metrics=(
            "fid",
            "fid_ddim20_eta0_w1",
            "fid_ddim20_eta0_w3",
            "class_accuracy",
            "class_accuracy_ddim20_eta0_w1",
            "class_accuracy_ddim20_eta0_w3",
        ),
    )
)


# Where a seed's spread comes from (Bouthillier et al. 2021): one good
# configuration, its weight initialisation and data order crossed 3 x 3, and
# the samples scored drawn 3 times at the end of each trial (eval_draws):
# crossing eval_seed as an axis would train the same model three times over
SEED_CROSS = {"init_seed": Choice((0, 1, 2)), "data_seed": Choice((0, 1, 2))}

register(
    Study(
        name="seed_variance",
        description="the best gan_stability configuration (a WGAN-GP DCGAN) with init and "
        "data-order seeds crossed 3 x 3 and 3 evaluation draws: how much of fid's spread "
        "each seed source makes (analysis.variance_sources)",
        family="gan",
        dataset="mnist5k",
        metric="fid",
        mode="min",
        axes=SEED_CROSS,
        # the confirmed #1 of the README's default gan_stability run
        fixed={
            "lr_g": 0.00106,
            "lr_d": 0.000706,
            "beta1": 0.401,
            "loss": "wgan_gp",
            "n_disc": 1,
            "replay": False,
            "mbstd": True,
            "arch": "dcgan",
            "epochs": 12,
            "eval_every": 4,
            "channels": 16,
            "width": 256,
            "eval_draws": 3,
        },  # fmt: skip
        num_samples=9,
        seeds=1,
        search="grid",
        smoke={**SMOKE, "channels": 8, "width": 64},
        table_metrics=("fid", "fid_draws_std", "modes_covered"),
    )
)

register(
    Study(
        name="seed_variance_vae",
        description="one VAE (beta 1, 16 latents) with init and data-order seeds crossed "
        "3 x 3 and 3 evaluation draws: seed_variance's question for a likelihood model",
        family="vae",
        dataset="mnist5k",
        metric="fid",
        mode="min",
        axes=SEED_CROSS,
        fixed={"kl_weight": 1.0, "latent": 16, "epochs": 20, "eval_every": 10, "eval_draws": 3},
        num_samples=9,
        seeds=1,
        search="grid",
        smoke=SMOKE,
        table_metrics=("fid", "fid_draws_std", "recon_mse"),
    )
)


# The chapter's exercise: does experience replay (showing D past fakes
# again) help? gan_collapse's mlp GAN and evaluation every epoch, replay off
# or on with a small or large buffer (512 or 8192 fakes, 8 or 128 batches
# back) replacing a quarter or half of each fake batch, over the learning
# rates where gan_collapse's runs go from stable to collapsing.
REPLAY = Bundles(
    {
        "off": {"replay": False},
        "512x0.25": {"replay": True, "replay_capacity": 512, "replay_fraction": 0.25},
        "512x0.5": {"replay": True, "replay_capacity": 512, "replay_fraction": 0.5},
        "8192x0.25": {"replay": True, "replay_capacity": 8192, "replay_fraction": 0.25},
        "8192x0.5": {"replay": True, "replay_capacity": 8192, "replay_fraction": 0.5},
    }
)

register(
    Study(
        name="gan_replay",
        description="does experience replay help a GAN? mlp GANs on mnist5k with replay off "
        "or on (buffer 512 or 8192 fakes, a quarter or half of each fake batch replayed) "
        "over 3 learning rates, judged at every epoch over 3 seeds",
        family="gan",
        dataset="mnist5k",
        metric="fid",
        mode="min",
        axes={
            "buffer": REPLAY,
            "lr": Tied(("lr_g", "lr_d"), (4e-3, 1e-2, 2.5e-2)),
        },
        fixed=OVER_TIME,
        num_samples=15,
        seeds=3,
        confirm=0,
        search="grid",
        smoke={**SMOKE, "width": 64, "batch_size": 64},
        table_metrics=("fid", "modes_covered", "mode_jsd"),
        group_by="buffer",
    )
)


# The chapter's latent diffusion on diffusion_schedule's data and budget (200
# epochs of 8x8 digits, batch 64, T 1000, the same four samplers): a VAE
# trained first in each trial, an MLP denoiser in its latent space. kl_weight
# 0 makes the first stage an autoencoder.
register(
    Study(
        name="latent_diffusion",
        description="DDPM in the latent space of a VAE trained first in the trial, on 8x8 "
        "digits: latent size, noise schedule and first-stage KL weight (0: an autoencoder) "
        "against fid per sampler and seconds per 1000 samples",
        family="latent_diffusion",
        dataset="digits",
        metric="fid",
        mode="min",
        axes={
            "latent": Choice((4, 8, 16)),
            "schedule": Choice(("linear", "cosine")),
            "kl_weight": Choice((0.0, 1.0)),
        },
        fixed={
            **{k: v for k, v in DIGITS_DDPM.items() if k != "channels"},
            "first_epochs": 30,
            "eval_every": 100,
        },
        num_samples=12,
        seeds=2,
        search="grid",
        smoke={
            **SMOKE,
            "eval_samples": 100,
            "T": 100,
            "first_epochs": 2,
            "width": 32,
            "samplers": "ddim5_eta0,ddim10_eta1",
        },
        table_metrics=(
            "fid",
            "fid_ddim10_eta0",
            "fid_ddim20_eta0",
            "fid_ddim20_eta1",
            "recon_mse",
            "sample_seconds",
        ),
    )
)


# The chapters' trilemma: four families on 8x8 digits, one classifier's
# feature space. Each family keeps its own settings (scoped FAMILY.key) at a
# budget sized for it: the DDPM is diffusion_schedule's.
register(
    Study(
        name="trilemma",
        description="the generative trilemma on 8x8 digits: a conv VAE, a DCGAN, a DDPM "
        "sampled with DDIM at 10 and 50 steps, and a VQ-VAE with a learned prior, scored in "
        "one feature space for quality (fid, precision), coverage (recall, coverage, modes) "
        "and speed (seconds per 1000 samples, training seconds)",
        dataset="digits",
        metric="fid",
        mode="min",
        axes={"family": Choice(("vae", "gan", "diffusion", "vqvae"))},
        # every family 200 epochs at batch 64 (4,400 steps on digits' 1,400
        # training images); the DDPM is diffusion_schedule's, evaluated once
        # (its three samplers of 1000 images cost 15 s)
        fixed={
            "epochs": 200,
            "eval_every": 100,
            "vae.arch": "conv",
            "vae.batch_size": 64,
            "gan.arch": "dcgan",
            "gan.channels": 32,
            **{f"diffusion.{k}": v for k, v in DIGITS_DDPM.items() if k != "epochs"},
            "diffusion.eval_every": 200,
            "diffusion.samplers": "ddim50_eta0,ddim10_eta0,ddim20_eta1",
            "vqvae.prior_epochs": 30,
            "vqvae.batch_size": 64,
        },
        num_samples=4,
        seeds=3,
        confirm=0,
        search="grid",
        smoke={
            **SMOKE,
            "eval_samples": 100,
            "diffusion.channels": 8,
            "diffusion.T": 100,
            "diffusion.samplers": "ddim5_eta0,ddim10_eta0",
            "vqvae.prior_epochs": 1,
        },
        table_metrics=("fid", "precision", "recall", "coverage", "modes_covered", "sample_seconds"),
    )
)
