"""The study registry: every study the CLI can run, each one entry."""

from __future__ import annotations

from study.spec import Choice, LogUniform, Study, Uniform

# Shrinks any study to seconds: few epochs, a slice of the data, few samples.
SMOKE = {"epochs": 2, "eval_every": 1, "train_size": 512, "eval_samples": 200}

STUDIES: dict[str, Study] = {}


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
        # Lucic et al. 2018 wide search, sized for a 2-core CPU: 8 configurations
        # x 3 seeds x 12 epochs finish in about 10 minutes.
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
        seeds=3,
        smoke={**SMOKE, "channels": 8, "width": 64},
        table_metrics=("fid", "modes_covered", "mode_kl"),
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
