"""Diagnostic (not part of the suite; git-ignored): how far a channels-last step is from the NCHW step, beside how far
two NCHW trainers are from each other (the noise floor), per step and parameter. Prints one JSON line per case."""
import json
from dataclasses import replace

import pytest
import torch

from test_gpu import _cache_of, _copy_weights, _one_canvas_batches, _relative, _trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize(("kind", "amp", "graphs"), [("cached", False, True), ("cached", False, False),
                                                     ("plain", False, True), ("plain", True, True),
                                                     ("cached", True, True), ("online", True, True)])
def test_layout_diag(mixed_cache, tmp_path, kind, amp, graphs):
    from frs_cli.train.loop import PendingLosses, train_channels_last

    recipe, cache = _cache_of(mixed_cache, tmp_path, "int8")
    batches = _one_canvas_batches(recipe, cache)
    if kind != "cached":
        batches = [replace(b, teacher=None) for b in batches]
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    nhwc, nchw, again = (_trainer(recipe, cache, kind, graphs, None, amp) for _ in range(3))
    train_channels_last(nhwc.objective)
    nhwc.objective.load_state_dict(nchw.objective.state_dict())
    names = [n for n, p in nchw.objective.named_parameters()]
    ref = None
    if not amp:  # a float64 reference step (eager, NCHW): how far each layout is from it
        ref = _trainer(recipe, cache, kind, False, None, False)
        ref.objective.double()
    rows = []
    for it, batch in enumerate(batches + batches[::-1]):
        _copy_weights(nhwc, nchw)
        _copy_weights(again, nchw)
        read = {}
        trainers = [("nhwc", nhwc, batch), ("nchw", nchw, batch), ("again", again, batch)]
        if ref is not None:
            _copy_weights(ref, nchw)
            trainers.append(("ref", ref, replace(batch, images=batch.images.double())))
        for key, trainer, b in trainers:
            try:
                losses, loss = trainer.run_step(b, it)
            except Exception as exc:  # the float64 reference may not run everywhere
                print("DIAG-ERROR", key, type(exc).__name__, str(exc)[:300])
                ref = None
                continue
            values, total = PendingLosses(losses, loss).read()
            grads = {n: p.grad.clone() for n, p in zip(names, trainer.objective.parameters()) if p.grad is not None}
            read[key] = (values, total, grads)
        row = {"it": it}
        if "ref" in read:
            g_ref = read["ref"][2]
            row["to_float64"] = {key: sorted(((n, _relative(read[key][2][n], g_ref[n])) for n in g_ref),
                                             key=lambda kv: -kv[1])[:3] for key in ("nhwc", "nchw")}
            row["to_float64_median"] = {key: sorted(_relative(read[key][2][n], g_ref[n]) for n in g_ref)[len(g_ref) // 2]
                                        for key in ("nhwc", "nchw")}
        for key in ("nhwc", "again"):
            v, t, g = read[key]
            v0, t0, g0 = read["nchw"]
            rel = {n: _relative(g[n], g0[n]) for n in g0}
            worst = sorted(rel.items(), key=lambda kv: -kv[1])[:3]
            flat = (torch.cat([g[n].float().flatten() for n in g0]), torch.cat([g0[n].float().flatten() for n in g0]))
            row[key + "_global"] = _relative(*flat)
            row[key] = {"loss_rel": {k: abs(v[k] - v0[k]) / max(abs(v0[k]), 1e-12) for k in v0},
                        "grad_rel_max": worst, "grad_rel_median": sorted(rel.values())[len(rel) // 2]}
        rows.append(row)
    print("DIAG", json.dumps({"kind": kind, "amp": amp, "graphs": graphs, "rows": rows}))
