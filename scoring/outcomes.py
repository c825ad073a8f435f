"""How a trial ends, defined once: the outcome names in display order, their
colours, and the divergence and collapse rules the trainable applies."""

from __future__ import annotations

import math

OUTCOMES = ("ok", "collapsed", "diverged", "stopped", "failed")
RUNNING = "running"  # a trial's result before its last epoch
COLOURS = {
    "ok": "#2a9d8f", "collapsed": "#e9c46a", "diverged": "#e76f51", "stopped": "#8d99ae",
    "failed": "#6d597a",
}  # fmt: skip
SCORED = ("ok", "collapsed", "stopped")  # outcomes whose metric values mean something
RECON_COLLAPSE = 0.9  # recon_vs_mean above this: barely better than the mean image
# dead_codes above this: a VQ-VAE whose codebook collapsed to a few entries
# (measured on mnist5k: collapsed codebooks leave 80-97% unused, live ones 0-2%)
CODEBOOK_COLLAPSE = 0.75


def ended(outcome: str | None) -> str:
    """The outcome of a trial that has ended: one still `running` when it
    ended was stopped early (by a scheduler); none at all means it failed."""
    if outcome is None:
        return "failed"
    return "stopped" if outcome == RUNNING else outcome


def seed_results(result: dict | None) -> list[dict]:
    """The per-seed results a trial reported: a seed pack's members, or the
    trial's own result (one seed)."""
    result = result or {}
    return result.get("members") or [result]


def divergence(metrics: dict[str, float], max_loss: float) -> str | None:
    """Why training metrics count as diverged, or None: a non-finite value,
    or a loss whose magnitude exceeds max_loss."""
    for k, v in metrics.items():
        if not math.isfinite(v):
            return f"non-finite {k}"
        if "loss" in k and abs(v) > max_loss:
            return f"|{k}| = {abs(v):.3g} exceeds max_loss {max_loss:g}"
    return None


def collapse_reason(metrics: dict[str, float], n_modes: int) -> str | None:
    """Why a trial's final evaluation counts as collapsed, or None: its
    codebook went mostly unused on held-out inputs, its samples cover under
    half of the classes/modes, or it reconstructs held-out inputs hardly
    better than by answering the training mean (`recon_vs_mean`)."""
    dead = metrics.get("dead_codes")
    if dead is not None and dead > CODEBOOK_COLLAPSE:
        perplexity = metrics.get("codebook_perplexity", math.nan)
        return f"codebook collapsed: {dead:.0%} of entries unused (perplexity {perplexity:.1f})"
    covered = metrics.get("modes_covered", metrics.get("modes_captured"))
    if covered is not None and covered < n_modes / 2:
        return f"final samples cover {covered:g} of {n_modes} modes"
    ratio = metrics.get("recon_vs_mean")
    if ratio is not None and ratio > RECON_COLLAPSE:
        return f"held-out recon_mse is {ratio:.2f} x that of the mean image"
    return None


def final_outcome(
    diverged: str | None, last_eval: dict[str, float], n_modes: int
) -> tuple[str, str]:
    """(outcome, reason) of a trial's last epoch."""
    if diverged is not None:
        return "diverged", diverged
    if reason := collapse_reason(last_eval, n_modes):
        return "collapsed", reason
    return "ok", ""
