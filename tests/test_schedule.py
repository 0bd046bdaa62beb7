"""The optimizer and the LR schedule: mmdetection's warm-ups and its bias multipliers (its FCOS configs: biases at
twice the LR without weight decay, a constant warm-up at 1/3 for 500 iterations)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from frs_cli.config import load_recipe
from frs_cli.errors import ConfigError
from frs_cli.train.config import TrainConfig
from frs_cli.train.schedule import build_optimizer, build_scheduler, lr_factor

FCOS = TrainConfig(lr=0.01, weight_decay=1e-4, bias_lr_mult=2.0, bias_decay_mult=0.0, warmup="constant",
                   warmup_factor=1 / 3, warmup_iters=500, lr_steps=(16, 22))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False),
                         nn.Flatten(), nn.LazyLinear(2))


def test_warm_ups_linear_and_constant():
    linear = [lr_factor(it, 1000, 500, 0.001, (16, 22), 0.1) for it in (0, 250, 499, 500)]
    assert linear == pytest.approx([0.001, 0.5005, 0.001 * (1 / 500) + 499 / 500, 1.0])
    constant = [lr_factor(it, 1000, 500, 1 / 3, (16, 22), 0.1, "constant") for it in (0, 250, 499, 500, 16_000)]
    assert constant == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0, 0.1])


def test_biases_of_layers_but_norms_train_at_the_multiples_and_one_group_otherwise():
    model = _model()
    model(torch.zeros(1, 3, 5, 5))  # the lazy layer's shape
    conv, gn, bn, _, _, fc = model
    plain = build_optimizer(model, TrainConfig(lr=0.01))
    assert len(plain.param_groups) == 1
    assert [id(p) for p in plain.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    opt = build_optimizer(model, FCOS)
    (weights, biases) = opt.param_groups
    assert [id(p) for p in biases["params"]] == [id(conv.bias), id(fc.bias)]
    assert id(gn.bias) in {id(p) for p in weights["params"]}  # a normalisation layer's bias keeps LR and decay
    assert {id(p) for p in weights["params"]} == {id(p) for p in model.parameters()} - {id(conv.bias), id(fc.bias)}
    assert (weights["lr"], weights["weight_decay"]) == (0.01, 1e-4)
    assert (biases["lr"], biases["weight_decay"]) == (0.02, 0.0)
    bn.weight.requires_grad_(False)  # a frozen parameter is no one's
    assert id(bn.weight) not in {id(p) for g in build_optimizer(model, FCOS).param_groups for p in g["params"]}

    # one step: a bias moves by 2 x lr x its gradient (no decay), a weight by lr x (gradient + wd x weight)
    sched = build_scheduler(opt, FCOS, iters_per_epoch=100)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 / 3, 0.02 / 3])  # the constant warm-up
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(2, 3, 5, 5)).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    sched.step()
    lr = 0.01 / 3
    torch.testing.assert_close(model[0].bias, before["0.bias"] - 2 * lr * grads["0.bias"])
    torch.testing.assert_close(model[0].weight, before["0.weight"] - lr * (grads["0.weight"] + 1e-4 * before["0.weight"]))
    torch.testing.assert_close(model[1].bias, before["1.bias"] - lr * (grads["1.bias"] + 1e-4 * before["1.bias"]))


def test_the_fcos_recipes_carry_mmdetections_fcos_optimizer_and_the_trainer_builds_it(recipe):
    from frs_cli.data.coco import CocoViews
    from frs_cli.dist import setup
    from frs_cli.models import build_detector
    from frs_cli.train.loop import Trainer
    from frs_cli.train.objectives import GTObjective

    for name in ("coco_fcos_r50_to_r18.toml", "coco_fcos_r101_mmdet_to_r50.toml"):
        cfg = load_recipe(f"pipelines/{name}").train
        assert (cfg.bias_lr_mult, cfg.bias_decay_mult, cfg.warmup, cfg.warmup_factor, cfg.warmup_iters,
                cfg.grad_clip) == (2.0, 0.0, "constant", pytest.approx(1 / 3), 500, 35.0), name
    assert load_recipe("pipelines/coco_retinanet_r101_mmdet_to_r50.toml").train.bias_lr_mult == 1.0
    cfg = replace(recipe.train, bias_lr_mult=2.0, bias_decay_mult=0.0, warmup="constant", warmup_factor=0.25)
    data = CocoViews.from_config(recipe.data, recipe.data.train, recipe.geometry)
    objective = GTObjective(build_detector(recipe.student, data.index.num_classes))
    trainer = Trainer(objective, data, cfg, setup("cpu"), ("orig",))
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.25 * cfg.lr, 0.5 * cfg.lr])
    assert [g["weight_decay"] for g in groups] == [cfg.weight_decay, 0.0]
    heads = {id(m.bias) for m in objective.modules() if isinstance(m, nn.Conv2d) and m.bias is not None}
    assert heads and {id(p) for p in groups[1]["params"]} == heads


def test_a_bad_warm_up_or_multiplier_is_one_line():
    from frs_cli.config import recipe_from_dict

    with pytest.raises(ConfigError, match=r"recipe key 'train\.warmup': expected one of .*linear.*constant"):
        recipe_from_dict({"train": {"warmup": "cosine"}})
    with pytest.raises(ConfigError, match=r"recipe key 'train\.bias_lr_mult': expected a finite number >= 0, got -2"):
        recipe_from_dict({"train": {"bias_lr_mult": -2.0}})


def test_mmdetection_layout_towers_have_no_conv_bias_before_their_group_norms():
    """mmdetection's FCOS and GFL towers (``ConvModule`` with GN, ``conv_bias='auto'``) have no conv bias: the
    mmdetection-layout students hold it at 0, frozen, so it neither trains (at 2x the LR with FCOS's optimizer) nor
    shifts a channel before GroupNorm; torchvision's FCOS keeps its trainable biases."""
    from frs_cli.models import ModelConfig, build_detector

    for arch, trainable in (("fcos_resnet50_fpn_mmdet", False), ("gfl_resnet50_fpn_mmdet", False),
                            ("fcos_resnet50_fpn", True)):
        model = build_detector(ModelConfig(arch=arch), 80)
        towers = [(n, m.bias) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
                  and (".conv." in n or ".tower." in n) and "backbone" not in n]
        assert len(towers) == 8, (arch, [n for n, _ in towers])  # 4 convs in each of the two towers
        assert all(p.requires_grad is trainable for _, p in towers), arch
        if not trainable:
            assert all(float(p.abs().max()) == 0.0 for _, p in towers), arch
            grouped = {id(p) for g in build_optimizer(model, FCOS).param_groups for p in g["params"]}
            assert not grouped & {id(p) for _, p in towers}, arch
