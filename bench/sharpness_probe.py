"""Run one frs command with a probe on the feature-imitation term's sharpness in the adapters' weights.

    python3 bench/sharpness_probe.py --log RUN/sharpness.jsonl -- distill -p recipe.toml --cache c.zarr --out RUN

Why: a step of heavy-ball SGD (momentum mu) on a quadratic of curvature lambda is stable only while
lr * lambda < 2 * (1 + mu), 3.8 at mu = 0.9. The FRS feature term is a quadratic in each adapter phi_l (a 3x3 conv):
with x_p the 3x3 patch of student features at position p (C * 9 values, and a 1 for the bias) and S the mask
weights over the real image area, the Hessian of ``w * alpha * L_FPN`` in one output channel's weights is
``2 * w * alpha * E_S[x x^T]``. Its largest eigenvalue lies between ``2 w alpha |E_S x|^2`` (the mean's
direction) and ``2 w alpha E_S |x|^2`` (the trace). Both bounds are logged per level and iteration; nothing the
run computes changes (the probe reads detached copies), so the run logs the same losses as without it.

Each line of the log: ``{"iter", "alpha", "w", "lo": [per level], "hi": [per level]}``; ``lr`` is in the run's
metrics.jsonl under the same ``iter``. ``bench/claim_verdicts.py`` reads both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def patch_moments(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[|E_S x|^2, E_S |x|^2]`` (a 2-tensor on the features' device) over 3x3 zero-padded patches of
    ``features`` (B, C, H, W), bias term included, with ``weights`` (B, H, W) as S (a weighted mean)."""
    f = features.detach().float()
    m = weights.detach().float()
    n = m.sum().clamp_min(1e-12)
    h, w = f.shape[-2:]
    padded = F.pad(f, (1, 1, 1, 1))
    lo = hi = f.new_ones(())
    for dy in range(3):
        for dx in range(3):
            shifted = padded[:, :, dy:dy + h, dx:dx + w]
            mean = (shifted * m[:, None]).sum(dim=(0, 2, 3)) / n
            lo = lo + mean.pow(2).sum()
            hi = hi + (shifted.pow(2).sum(dim=1) * m).sum() / n
    return torch.stack([lo, hi])


def install(log_path: Path) -> None:
    from frs_cli import losses
    from frs_cli.train import objectives

    state: dict = {}
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the whole run, closed at exit
    adapter_forward = losses.FeatureAdapter.forward
    feature_loss = objectives.feature_loss
    objective_forward = objectives.FRSObjective.forward

    def adapters_seen(self, features):
        state["inputs"] = list(features)
        return adapter_forward(self, features)

    def feature_loss_seen(student_adapted, teacher, masks, valid=None):
        out = feature_loss(student_adapted, teacher, masks, valid)
        with torch.no_grad():
            bounds = [patch_moments(f, masks[lv].float() * (valid[lv].float() if valid is not None else 1.0))
                      for lv, f in enumerate(state.get("inputs", []))]
        state["bounds"] = torch.stack(bounds).tolist() if bounds else []  # one device read per iteration
        return out

    def forward_seen(self, batch, step):
        out = objective_forward(self, batch, step)
        bounds = state.pop("bounds", [])
        log.write(json.dumps({"iter": step, "alpha": self.cfg.alpha,
                              "w": losses.distill_weight(step, self.cfg.warmup_iters),
                              "lo": [b[0] for b in bounds], "hi": [b[1] for b in bounds]}) + "\n")
        return out

    losses.FeatureAdapter.forward = adapters_seen
    objectives.feature_loss = feature_loss_seen
    objectives.FRSObjective.forward = forward_seen


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "--log" or args[2] != "--":
        raise SystemExit("usage: sharpness_probe.py --log FILE -- FRS_ARGS...")
    install(Path(args[1]))
    from frs_cli.cli.app import main as frs_main

    sys.argv = ["frs", *args[3:]]
    frs_main()


if __name__ == "__main__":
    main()
