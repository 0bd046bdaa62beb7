"""FRS losses: masks, feature loss, head loss, warm-up weight, GT-box masks and the feature adapter.

Every expected value is computed independently of the library, by explicit loops in float64.
"""

import math

import pytest
import torch

from frs_cli.errors import FrsError
from frs_cli.losses import (
    FeatureAdapter,
    distill_weight,
    feature_loss,
    frs_losses,
    frs_masks,
    gt_box_masks,
    head_loss,
    position_weights,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _bce_naive(p: float, q: float) -> float:
    return -(q * math.log(p) + (1.0 - q) * math.log(1.0 - p))


def _bce_stable(zs: float, zt: float) -> float:
    # -[q log sigmoid(zs) + (1 - q) log(1 - sigmoid(zs))] with q = sigmoid(zt), using
    # log sigmoid(z) = -softplus(-z) and log(1 - sigmoid(z)) = -softplus(z).
    q = _sigmoid(zt)
    return q * _softplus(-zs) + (1.0 - q) * _softplus(zs)


def _feature_expected(student, teacher, masks, valid=None) -> float:
    """sum_l sum_{b,c,h,w} S (T - F)^2 / sum_{b,h,w} S, by explicit loops in float64."""
    total = 0.0
    for lv, (s, t, m) in enumerate(zip(student, teacher, masks)):
        s, t, m = s.double().tolist(), t.double().tolist(), m.double().tolist()
        num = den = 0.0
        for b in range(len(s)):
            for h in range(len(s[b][0])):
                for w in range(len(s[b][0][0])):
                    if valid is not None and not bool(valid[lv][b, h, w]):
                        continue
                    weight = m[b][h][w]
                    den += weight
                    for c in range(len(s[b])):
                        num += weight * (t[b][c][h][w] - s[b][c][h][w]) ** 2
        total += num / den
    return total


def _mask_expected(zt) -> list:
    """max over K of sigmoid, computed per element with math (float64), as nested lists (B, H, W)."""
    z = zt.double().tolist()
    return [[[max(_sigmoid(z[b][k][h][w]) for k in range(len(z[b]))) for w in range(len(z[b][0][0]))]
             for h in range(len(z[b][0]))] for b in range(len(z))]


def _head_expected(zs_levels, zt_levels, valid=None, bce=_bce_naive) -> float:
    total = 0.0
    for lv, (zs, zt) in enumerate(zip(zs_levels, zt_levels)):
        m = _mask_expected(zt)
        s, t = zs.double().tolist(), zt.double().tolist()
        num = den = 0.0
        for b in range(len(s)):
            for h in range(len(s[b][0])):
                for w in range(len(s[b][0][0])):
                    if valid is not None and not bool(valid[lv][b, h, w]):
                        continue
                    den += m[b][h][w]
                    for k in range(len(s[b])):
                        if bce is _bce_naive:
                            value = bce(_sigmoid(s[b][k][h][w]), _sigmoid(t[b][k][h][w]))
                        else:
                            value = bce(s[b][k][h][w], t[b][k][h][w])
                        num += m[b][h][w] * value
        total += num / den
    return total


def _scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------- frs_masks


def test_frs_masks_are_max_over_channels_of_sigmoid_shape_b_h_w():
    g = torch.Generator().manual_seed(0)
    levels = [torch.randn(2, 5, 3, 4, generator=g) * 3, torch.randn(2, 5, 2, 2, generator=g) * 3]
    masks = frs_masks(levels)
    assert len(masks) == 2
    for z, m in zip(levels, masks):
        assert m.shape == (z.shape[0], z.shape[2], z.shape[3])
        assert m.dtype == torch.float32
        expected = torch.tensor(_mask_expected(z), dtype=torch.float64)
        torch.testing.assert_close(m.double(), expected, rtol=1e-6, atol=1e-7)
        naive = torch.sigmoid(z.double()).max(dim=1).values
        torch.testing.assert_close(m.double(), naive, rtol=1e-6, atol=1e-7)


def test_frs_masks_lie_strictly_between_zero_and_one_for_moderate_logits():
    z = torch.linspace(-15, 15, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    (m,) = frs_masks([z])
    assert bool((m > 0).all())
    assert bool((m < 1).all())


def test_frs_masks_are_detached_from_teacher_logits():
    z = torch.randn(1, 4, 3, 3, requires_grad=True)
    (m,) = frs_masks([z])
    assert m.requires_grad is False
    assert m.grad_fn is None


def test_frs_masks_use_whole_channel_axis_not_only_first_channel():
    z = torch.full((1, 3, 1, 2), -5.0)
    z[0, 2, 0, 0] = 2.0  # the max sits in the last channel at position (0, 0)
    (m,) = frs_masks([z])
    torch.testing.assert_close(m, torch.tensor([[[_sigmoid(2.0), _sigmoid(-5.0)]]], dtype=torch.float32))


# -------------------------------------------------------------------------------------------- feature_loss


def _tiny_feature_level():
    # B=1, C=2, H=W=2, chosen numbers
    teacher = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.5], [0.0, 2.0]]]])
    student = torch.tensor([[[[0.0, 2.5], [1.0, 4.0]], [[1.0, 0.5], [-2.0, 1.0]]]])
    mask = torch.tensor([[[0.9, 0.2], [0.5, 0.1]]])
    return student, teacher, mask


def test_feature_loss_hand_computed_tiny_example():
    s, t, m = _tiny_feature_level()
    # per position: sum_c (T - F)^2
    # (0,0): (1-0)^2 + (-1-1)^2 = 1 + 4 = 5
    # (0,1): (2-2.5)^2 + (0.5-0.5)^2 = 0.25
    # (1,0): (3-1)^2 + (0+2)^2 = 8
    # (1,1): (4-4)^2 + (2-1)^2 = 1
    num = 0.9 * 5 + 0.2 * 0.25 + 0.5 * 8 + 0.1 * 1
    den = 0.9 + 0.2 + 0.5 + 0.1
    loss = feature_loss([s], [t], [m])
    assert loss.shape == ()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, _scalar(num / den))
    torch.testing.assert_close(loss, _scalar(_feature_expected([s], [t], [m])))


def test_feature_loss_divides_by_mask_sum_not_count():
    s, t, _ = _tiny_feature_level()
    half = torch.full((1, 2, 2), 0.5)
    per_position = [5.0, 0.25, 8.0, 1.0]
    # sum-normalised: sum(0.5 * d) / (4 * 0.5) = mean(d); a count would give half of that
    expected = sum(0.5 * d for d in per_position) / (0.5 * 4)
    count_based = sum(0.5 * d for d in per_position) / 4
    assert expected != count_based
    loss = feature_loss([s], [t], [half])
    torch.testing.assert_close(loss, _scalar(expected))


def test_feature_loss_is_unchanged_when_mask_is_scaled_by_a_constant():
    s, t, m = _tiny_feature_level()
    base = feature_loss([s], [t], [m])
    for k in (0.01, 0.37, 3.0):
        torch.testing.assert_close(feature_loss([s], [t], [m * k]), base)


def test_feature_loss_sums_channels_duplicating_channels_doubles_loss():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 4, 5, generator=g)
    t = torch.randn(2, 3, 4, 5, generator=g)
    m = torch.rand(2, 4, 5, generator=g) * 0.9 + 0.05
    one = feature_loss([s], [t], [m])
    two = feature_loss([torch.cat([s, s], 1)], [torch.cat([t, t], 1)], [m])
    torch.testing.assert_close(two, 2 * one)
    torch.testing.assert_close(one, _scalar(_feature_expected([s], [t], [m])))


def test_feature_loss_sums_levels():
    g = torch.Generator().manual_seed(2)
    shapes = [(2, 3, 4, 4), (2, 3, 2, 2)]
    s = [torch.randn(*sh, generator=g) for sh in shapes]
    t = [torch.randn(*sh, generator=g) for sh in shapes]
    m = [torch.rand(sh[0], sh[2], sh[3], generator=g) * 0.9 + 0.05 for sh in shapes]
    both = feature_loss(s, t, m)
    l0 = feature_loss(s[:1], t[:1], m[:1])
    l1 = feature_loss(s[1:], t[1:], m[1:])
    assert not torch.isclose(l0, l1)  # so that a mean over levels would differ from the sum
    torch.testing.assert_close(both, l0 + l1)
    torch.testing.assert_close(both, _scalar(_feature_expected(s, t, m)))


def test_feature_loss_normalises_over_whole_batch():
    # N is the mask sum over (b, h, w) of the whole batch, not per image
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 2, 3, 3, generator=g)
    t = torch.randn(3, 2, 3, 3, generator=g)
    m = torch.rand(3, 3, 3, generator=g) * 0.9 + 0.05
    loss = feature_loss([s], [t], [m])
    torch.testing.assert_close(loss, _scalar(_feature_expected([s], [t], [m])))


def test_feature_loss_valid_excludes_padding_exactly():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(1, 3, 4, 6, generator=g)
    t = torch.randn(1, 3, 4, 6, generator=g)
    m = torch.rand(1, 4, 6, generator=g) * 0.8 + 0.1
    vh, vw = 3, 4
    valid = torch.zeros(1, 4, 6, dtype=torch.bool)
    valid[:, :vh, :vw] = True
    # garbage in the padded area: large values, masks near 1
    s_pad, t_pad, m_pad = s.clone(), t.clone(), m.clone()
    s_pad[..., vh:, :] = 1e3
    s_pad[..., :, vw:] = -7e2
    t_pad[..., vh:, :] = -5e2
    t_pad[..., :, vw:] = 9e2
    m_pad[:, vh:, :] = 0.99
    m_pad[:, :, vw:] = 0.99
    padded = feature_loss([s_pad], [t_pad], [m_pad], valid=[valid])
    cropped = feature_loss([s[..., :vh, :vw]], [t[..., :vh, :vw]], [m[:, :vh, :vw]])
    torch.testing.assert_close(padded, cropped)
    # and without `valid` the garbage does count (the test can fail)
    assert float(feature_loss([s_pad], [t_pad], [m_pad])) > 10 * float(cropped)


def test_feature_loss_valid_per_image_sizes_in_a_batch():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 2, 4, 5, generator=g)
    t = torch.randn(2, 2, 4, 5, generator=g)
    m = torch.rand(2, 4, 5, generator=g) * 0.8 + 0.1
    valid = torch.zeros(2, 4, 5, dtype=torch.bool)
    valid[0, :3, :5] = True
    valid[1, :4, :2] = True
    loss = feature_loss([s], [t], [m], valid=[valid])
    torch.testing.assert_close(loss, _scalar(_feature_expected([s], [t], [m], valid=[valid])))


def test_feature_loss_gradient_reaches_student_only_through_its_input():
    s, t, m = _tiny_feature_level()
    s = s.clone().requires_grad_(True)
    loss = feature_loss([s], [t], [m])
    loss.backward()
    # d/dF of sum S (T - F)^2 / N = -2 S (T - F) / N
    den = float(m.sum())
    expected = -2 * m[:, None] * (t - s.detach()) / den
    torch.testing.assert_close(s.grad, expected)


def test_feature_loss_shape_mismatch_raises_frs_error():
    s = torch.zeros(1, 2, 3, 3)
    with pytest.raises(FrsError, match="feature_loss: level 0 shapes do not line up"):
        feature_loss([s], [torch.zeros(1, 3, 3, 3)], [torch.ones(1, 3, 3)])
    with pytest.raises(FrsError, match="shapes do not line up"):
        feature_loss([s], [torch.zeros(1, 2, 3, 3)], [torch.ones(2, 3, 3)])
    with pytest.raises(FrsError, match="shapes do not line up"):
        feature_loss([s], [torch.zeros(1, 2, 3, 3)], [torch.ones(1, 3, 4)])


def test_feature_loss_level_count_mismatch_raises_frs_error():
    s = torch.zeros(1, 2, 3, 3)
    with pytest.raises(FrsError, match="same number of levels"):
        feature_loss([s, s], [s], [torch.ones(1, 3, 3)] * 2)
    with pytest.raises(FrsError, match="same number of levels"):
        feature_loss([s], [s], [torch.ones(1, 3, 3)], valid=[torch.ones(1, 3, 3, dtype=torch.bool)] * 2)


# ----------------------------------------------------------------------------------------------- head_loss


def _tiny_head_level():
    # B=1, K=2, H=W=2, moderate logits
    zs = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]], [[-0.3, 1.5], [-2.0, 3.0]]]])
    zt = torch.tensor([[[[1.0, -2.0], [0.3, -0.5]], [[0.0, 2.5], [-1.0, 1.0]]]])
    return zs, zt


def test_head_loss_hand_computed_tiny_example():
    zs, zt = _tiny_head_level()
    (m,) = frs_masks([zt])
    # explicit arithmetic in float64
    num = den = 0.0
    for h in range(2):
        for w in range(2):
            S = max(_sigmoid(float(zt[0, 0, h, w])), _sigmoid(float(zt[0, 1, h, w])))
            den += S
            for k in range(2):
                p, q = _sigmoid(float(zs[0, k, h, w])), _sigmoid(float(zt[0, k, h, w]))
                num += S * -(q * math.log(p) + (1 - q) * math.log(1 - p))
    loss = head_loss([zs], [zt], [m])
    assert loss.shape == ()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, _scalar(num / den))


def test_head_loss_random_moderate_logits_match_naive_float64_formula():
    g = torch.Generator().manual_seed(6)
    zs = [torch.randn(2, 6, 3, 4, generator=g) * 2, torch.randn(2, 6, 2, 2, generator=g) * 2]
    zt = [torch.randn(2, 6, 3, 4, generator=g) * 2, torch.randn(2, 6, 2, 2, generator=g) * 2]
    loss = head_loss(zs, zt, frs_masks(zt))
    torch.testing.assert_close(loss, _scalar(_head_expected(zs, zt)))


def test_head_loss_is_finite_and_correct_for_extreme_logits():
    # channel 0 of the teacher is +100 everywhere so that S = 1; the other entries are +-100 mixed
    zs = torch.tensor([[[[100.0, -100.0], [100.0, -100.0]], [[100.0, -100.0], [-100.0, 100.0]]]])
    zt = torch.tensor([[[[100.0, 100.0], [100.0, 100.0]], [[100.0, 100.0], [-100.0, -100.0]]]])
    zs.requires_grad_(True)
    loss = head_loss([zs], [zt], frs_masks([zt]))
    assert bool(torch.isfinite(loss))
    expected = _head_expected([zs.detach()], [zt], bce=_bce_stable)
    # by hand, (student, teacher) per position (0,0), (0,1), (1,0), (1,1):
    # channel 0: (100,100), (-100,100), (100,100), (-100,100); channel 1: (100,100), (-100,100), (-100,-100),
    # (100,-100). BCE is ~0 where the signs agree and ~100 where they differ: 4 x 100 over N = 4 (S = 1)
    assert abs(expected - (100 + 100 + 100 + 100) / 4) < 1e-6
    torch.testing.assert_close(loss, _scalar(expected))
    loss.backward()
    assert bool(torch.isfinite(zs.grad).all())


def test_head_loss_extreme_student_logits_with_moderate_teacher_stay_finite():
    zs = torch.tensor([[[[100.0, -100.0]], [[-100.0, 100.0]]]])
    zt = torch.tensor([[[[0.5, -0.5]], [[1.0, 2.0]]]])
    loss = head_loss([zs], [zt], frs_masks([zt]))
    assert bool(torch.isfinite(loss))
    torch.testing.assert_close(loss, _scalar(_head_expected([zs], [zt], bce=_bce_stable)))


def test_head_loss_gradient_is_mask_times_probability_difference_over_n():
    g = torch.Generator().manual_seed(7)
    zs = (torch.randn(2, 3, 3, 3, generator=g) * 2).requires_grad_(True)
    zt = torch.randn(2, 3, 3, 3, generator=g) * 2
    masks = frs_masks([zt])
    head_loss([zs], [zt], masks).backward()
    S = torch.tensor(_mask_expected(zt), dtype=torch.float64)  # (B, H, W)
    expected = S[:, None] * (torch.sigmoid(zs.detach().double()) - torch.sigmoid(zt.double())) / S.sum()
    torch.testing.assert_close(zs.grad.double(), expected, rtol=1e-5, atol=1e-7)


def test_head_loss_does_not_backpropagate_into_teacher_logits():
    zs, zt = _tiny_head_level()
    zs = zs.clone().requires_grad_(True)
    zt = zt.clone().requires_grad_(True)
    loss = head_loss([zs], [zt], frs_masks([zt]))
    loss.backward()
    assert zt.grad is None
    assert zs.grad is not None


def test_feature_loss_does_not_backpropagate_into_teacher_features():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    masks = [torch.rand(2, 3, 3, generator=g)]
    loss = feature_loss([a], [t], masks)
    loss.backward()
    assert t.grad is None  # the teacher is a fixed target
    expected = -2 * position_weights(masks)[:, None] * (t.detach() - a.detach()).flatten(2)
    torch.testing.assert_close(a.grad.flatten(2), expected)


def test_head_loss_sums_over_k_duplicating_channels_doubles_loss():
    zs, zt = _tiny_head_level()
    one = head_loss([zs], [zt], frs_masks([zt]))
    zs2, zt2 = torch.cat([zs, zs], 1), torch.cat([zt, zt], 1)
    m2 = frs_masks([zt2])
    torch.testing.assert_close(m2[0], frs_masks([zt])[0])  # the max is unchanged by duplication
    torch.testing.assert_close(head_loss([zs2], [zt2], m2), 2 * one)


def test_head_loss_sums_levels_and_mask_scale_does_not_matter():
    g = torch.Generator().manual_seed(8)
    zs = [torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 2, 2, generator=g)]
    zt = [torch.randn(1, 4, 3, 3, generator=g) * 2, torch.randn(1, 4, 2, 2, generator=g) * 2]
    m = frs_masks(zt)
    l0, l1 = head_loss(zs[:1], zt[:1], m[:1]), head_loss(zs[1:], zt[1:], m[1:])
    assert not torch.isclose(l0, l1)
    torch.testing.assert_close(head_loss(zs, zt, m), l0 + l1)
    torch.testing.assert_close(head_loss(zs, zt, [x * 0.25 for x in m]), l0 + l1)


def test_head_loss_valid_excludes_padding_exactly():
    g = torch.Generator().manual_seed(9)
    zs = torch.randn(1, 3, 5, 4, generator=g)
    zt = torch.randn(1, 3, 5, 4, generator=g)
    vh, vw = 3, 2
    valid = torch.zeros(1, 5, 4, dtype=torch.bool)
    valid[:, :vh, :vw] = True
    zs_pad, zt_pad = zs.clone(), zt.clone()
    zs_pad[..., vh:, :] = -60.0
    zs_pad[..., :, vw:] = -60.0
    zt_pad[..., vh:, :] = 40.0  # garbage teacher => mask ~1 there and a huge BCE
    zt_pad[..., :, vw:] = 40.0
    padded = head_loss([zs_pad], [zt_pad], frs_masks([zt_pad]), valid=[valid])
    zs_c, zt_c = zs[..., :vh, :vw], zt[..., :vh, :vw]
    cropped = head_loss([zs_c], [zt_c], frs_masks([zt_c]))
    torch.testing.assert_close(padded, cropped)
    torch.testing.assert_close(cropped, _scalar(_head_expected([zs_c], [zt_c])))
    assert float(head_loss([zs_pad], [zt_pad], frs_masks([zt_pad]))) > 10 * float(cropped)


def test_head_loss_shape_mismatch_raises_frs_error():
    zs = torch.zeros(1, 9, 2, 2)
    with pytest.raises(FrsError, match="head_loss: level 0 shapes do not line up"):
        head_loss([zs], [torch.zeros(1, 8, 2, 2)], [torch.ones(1, 2, 2)])
    with pytest.raises(FrsError, match="head_loss: level 1 shapes do not line up"):
        head_loss([zs, zs], [zs, torch.zeros(1, 9, 2, 3)], [torch.ones(1, 2, 2)] * 2)
    with pytest.raises(FrsError, match="same number of levels"):
        head_loss([zs], [zs, zs], [torch.ones(1, 2, 2)])


# ------------------------------------------------------------------------------------------ distill_weight


def test_distill_weight_ramps_linearly_then_stays_at_one():
    for step in range(500):
        assert distill_weight(step, 500) == step / 500
    assert distill_weight(0, 500) == 0.0  # the official code's t / 500: the first iteration is GT loss only
    assert distill_weight(499, 500) == 499 / 500
    assert distill_weight(500, 500) == 1.0
    for step in (500, 501, 10_000):
        assert distill_weight(step, 500) == 1.0


def test_distill_weight_default_warmup_is_500_and_zero_warmup_is_one():
    assert distill_weight(100) == 100 / 500
    assert distill_weight(0, 0) == 1.0
    assert distill_weight(3, 10) == 3 / 10


# -------------------------------------------------------------------------------------------- gt_box_masks


def _gt_expected(boxes, h, w, s):
    """Mark cells whose centre ((c + .5) s, (r + .5) s) lies in a box; a box containing no centre marks
    the cell under its own centre."""
    out = [[0.0] * w for _ in range(h)]
    for x1, y1, x2, y2 in boxes:
        hit = False
        for r in range(h):
            for c in range(w):
                cx, cy = (c + 0.5) * s, (r + 0.5) * s
                if x1 <= cx <= x2 and y1 <= cy <= y2:
                    out[r][c] = 1.0
                    hit = True
        if not hit:
            out[int(((y1 + y2) / 2) // s)][int(((x1 + x2) / 2) // s)] = 1.0
    return out


def test_gt_box_masks_mark_cells_whose_centre_lies_in_a_box():
    # stride 8, 4x4 grid: centres at 4, 12, 20, 28
    boxes = [torch.tensor([[5.0, 3.0, 21.0, 13.0]])]
    (m,) = gt_box_masks(boxes, [(4, 4)], [8])
    # by hand: x centres 12, 20 in [5, 21] -> cols 1, 2; y centres 4, 12 in [3, 13] -> rows 0, 1
    expected = torch.zeros(1, 4, 4)
    expected[0, 0:2, 1:3] = 1.0
    assert m.shape == (1, 4, 4)
    torch.testing.assert_close(m, expected)
    torch.testing.assert_close(m[0], torch.tensor(_gt_expected([(5, 3, 21, 13)], 4, 4, 8)))


def test_gt_box_masks_mark_centre_cell_of_a_box_too_small_for_any_centre():
    # box [9, 9, 11, 11] contains no centre of the stride-8 grid (4, 12, ...); its centre (10, 10) is in cell (1, 1)
    (m,) = gt_box_masks([torch.tensor([[9.0, 9.0, 11.0, 11.0]])], [(4, 4)], [8])
    expected = torch.zeros(1, 4, 4)
    expected[0, 1, 1] = 1.0
    torch.testing.assert_close(m, expected)
    # a thin box: x in [17, 19] holds no centre (12, 20), y in [1, 30] holds all four; centre (18, 15.5) -> (1, 2)
    (m,) = gt_box_masks([torch.tensor([[17.0, 1.0, 19.0, 30.0]])], [(4, 4)], [8])
    expected = torch.zeros(1, 4, 4)
    expected[0, 1, 2] = 1.0
    torch.testing.assert_close(m, expected)


def test_gt_box_masks_batch_and_levels_match_explicit_loops():
    boxes_a = [(0.0, 0.0, 30.0, 20.0), (40.0, 10.0, 42.0, 12.0), (50.0, 40.0, 63.0, 63.0)]
    boxes_b = [(20.0, 30.0, 45.0, 60.0)]
    boxes = [torch.tensor(boxes_a), torch.tensor(boxes_b), torch.zeros(0, 4)]
    sizes, strides = [(8, 8), (4, 4), (2, 2)], [8, 16, 32]
    masks = gt_box_masks(boxes, sizes, strides)
    assert len(masks) == 3
    for (h, w), s, m in zip(sizes, strides, masks):
        assert m.shape == (3, h, w)
        torch.testing.assert_close(m[0], torch.tensor(_gt_expected(boxes_a, h, w, s)))
        torch.testing.assert_close(m[1], torch.tensor(_gt_expected(boxes_b, h, w, s)))
        torch.testing.assert_close(m[2], torch.zeros(h, w))  # an image without boxes has no mask


# ------------------------------------------------------------------------------------------ FeatureAdapter


def test_feature_adapter_is_one_3x3_conv_per_level_with_padding_and_bias():
    adapter = FeatureAdapter([4, 6], [8, 5])
    assert len(adapter.convs) == 2
    for conv, cin, cout in zip(adapter.convs, [4, 6], [8, 5]):
        assert isinstance(conv, torch.nn.Conv2d)
        assert conv.in_channels == cin
        assert conv.out_channels == cout
        assert conv.kernel_size == (3, 3)
        assert conv.padding == (1, 1)
        assert conv.stride == (1, 1)
        assert conv.bias is not None
        assert conv.bias.shape == (cout,)


def test_feature_adapter_maps_channels_and_keeps_spatial_size():
    torch.manual_seed(0)
    adapter = FeatureAdapter([3, 3], [5, 7])
    feats = [torch.randn(2, 3, 7, 9), torch.randn(2, 3, 4, 5)]
    out = adapter(feats)
    assert [tuple(o.shape) for o in out] == [(2, 5, 7, 9), (2, 7, 4, 5)]


def test_feature_adapter_output_matches_explicit_zero_padded_convolution():
    torch.manual_seed(1)
    adapter = FeatureAdapter([2], [3])
    x = torch.randn(1, 2, 3, 4)
    (y,) = adapter([x])
    wt = adapter.convs[0].weight.detach().double().tolist()
    bias = adapter.convs[0].bias.detach().double().tolist()
    xs = x.double().tolist()
    for o in range(3):
        for r in range(3):
            for c in range(4):
                acc = bias[o]
                for i in range(2):
                    for dr in range(3):
                        for dc in range(3):
                            rr, cc = r + dr - 1, c + dc - 1
                            if 0 <= rr < 3 and 0 <= cc < 4:  # zero padding of 1
                                acc += wt[o][i][dr][dc] * xs[0][i][rr][cc]
                torch.testing.assert_close(y[0, o, r, c].double(), torch.tensor(acc, dtype=torch.float64),
                                           rtol=1e-5, atol=1e-6)


def test_feature_adapter_level_count_mismatch_raises_frs_error():
    with pytest.raises(FrsError, match="student has 3 FPN levels, teacher 2"):
        FeatureAdapter([8, 8, 8], [8, 8])


@pytest.mark.parametrize("loss", [feature_loss, head_loss])
def test_mask_with_an_extra_singleton_channel_dim_raises_frs_error(loss):
    g = torch.Generator().manual_seed(10)
    s = torch.randn(2, 3, 4, 4, generator=g)
    t = torch.randn(2, 3, 4, 4, generator=g)
    m = torch.rand(2, 4, 4, generator=g) + 0.1
    with pytest.raises(FrsError, match="shapes do not line up"):
        loss([s], [t], [m[:, None]])


def _three_levels(batch: int = 3, channels: int = 4, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    grids = [(6, 5), (3, 3), (2, 1)]
    mk = lambda c, h, w: torch.randn(batch, c, h, w, generator=g)
    s = [mk(channels, h, w) for h, w in grids]
    t = [mk(channels, h, w) for h, w in grids]
    zs = [mk(7, h, w) for h, w in grids]
    zt = [mk(7, h, w) for h, w in grids]
    m = [torch.rand(batch, h, w, generator=g) * 0.9 + 0.05 for h, w in grids]
    valid = [torch.rand(batch, h, w, generator=g) > 0.3 for h, w in grids]
    return s, t, zs, zt, m, valid


def test_position_weights_are_mask_over_its_levels_valid_sum_side_by_side():
    _, _, _, _, m, valid = _three_levels()
    w = position_weights(m, valid)
    assert w.shape == (3, 30 + 9 + 2) and w.dtype == torch.float32
    start = 0
    for ml, vl in zip(m, valid):
        n = ml.shape[1] * ml.shape[2]
        expected = (ml * vl) / (ml * vl).sum()
        torch.testing.assert_close(w[:, start:start + n], expected.flatten(1))
        start += n


def test_frs_losses_equal_the_feature_and_head_losses_and_skip_the_head_without_logits():
    s, t, zs, zt, m, valid = _three_levels()
    feature, head = frs_losses(s, t, zs, zt, m, valid)
    torch.testing.assert_close(feature, _scalar(_feature_expected(s, t, m, valid=valid)))
    torch.testing.assert_close(feature, feature_loss(s, t, m, valid))
    torch.testing.assert_close(head, head_loss(zs, zt, m, valid))
    feature_only, none = frs_losses(s, t, None, None, m, valid)
    assert none is None
    torch.testing.assert_close(feature_only, feature)


def test_frs_losses_gradients_reach_every_level_of_the_student():
    s, t, zs, zt, m, valid = _three_levels()
    s = [x.requires_grad_() for x in s]
    zs = [x.requires_grad_() for x in zs]
    feature, head = frs_losses(s, t, zs, zt, m, valid)
    (feature + head).backward()
    for lv, (x, z) in enumerate(zip(s, zs)):
        w = (m[lv] * valid[lv]) / (m[lv] * valid[lv]).sum()
        torch.testing.assert_close(x.grad, -2 * w[:, None] * (t[lv] - x.detach()))
        torch.testing.assert_close(z.grad, w[:, None] * (torch.sigmoid(z.detach()) - torch.sigmoid(zt[lv])))
