import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resattn import AttentionModule, ModelConfig, normalize_mask
from resattn.attention import (
    CHANNEL_EPS,
    GATE_BLOCKS,
    MASK_BODIES,
    SPATIAL_EPS,
    HourglassMask,
    LocalConvMask,
    SoftMaskBranch,
)
from resattn.layers import ResidualUnit


@pytest.fixture
def logits():
    return torch.randn(4, 8, 7, 5) * 3  # |x| < 16: float32 sigmoid rounds to 1.0 beyond ~17


def test_f1_mixed_is_a_sigmoid_in_open_unit_interval(logits):
    m = normalize_mask(logits, "mixed")
    assert torch.equal(m, torch.sigmoid(logits))
    assert (m > 0).all() and (m < 1).all()


def test_f2_channel_has_unit_l2_norm_across_channels(logits):
    m = normalize_mask(logits, "channel")
    norms = m.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    assert (m < 0).any()  # no sigmoid: negative values, so 1 + M in [0, 2]
    assert ((1 + m) >= 0).all() and ((1 + m) <= 2).all()
    zero = normalize_mask(torch.zeros(1, 3, 2, 2), "channel")
    assert torch.isfinite(zero).all() and CHANNEL_EPS > 0


def test_f3_spatial_is_sigmoid_of_per_sample_per_channel_standardised_logits(logits):
    m = normalize_mask(logits, "spatial")
    mean = logits.mean(dim=(2, 3), keepdim=True)
    var = logits.var(dim=(2, 3), unbiased=False, keepdim=True)
    expected = torch.sigmoid((logits - mean) / torch.sqrt(var + SPATIAL_EPS))
    assert torch.allclose(m, expected, atol=1e-5)
    # per sample: changing another sample does not change this one
    other = logits.clone()
    other[1:] += 100
    assert torch.allclose(normalize_mask(other, "spatial")[0], m[0])


def test_normalize_mask_rejects_unknown_kind_and_bad_shape(logits):
    with pytest.raises(ValueError, match="'mixed', 'channel', 'spatial'"):
        normalize_mask(logits, "softmax")
    with pytest.raises(ValueError, match="N, C, H, W"):
        normalize_mask(logits[0], "mixed")


def _identity_units(module: nn.Module) -> nn.Module:
    """Replace every residual unit inside ``module`` by the identity."""
    for name, child in module.named_children():
        if isinstance(child, ResidualUnit):
            setattr(module, name, nn.Identity())
        else:
            _identity_units(child)
    return module


def up(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def pool(x):
    return F.max_pool2d(x, 3, 2, 1)


@pytest.mark.parametrize("size", [(32, 32), (33, 31), (17, 9)])
def test_hourglass_adds_only_the_upsampled_map_and_the_skip_unit(size):
    """With every residual unit the identity, the body must be exactly the paper's equation:
    nothing but upsample(deeper) + skip is summed (no down-path feature, no trunk output)."""
    body = _identity_units(HourglassMask(channels=4, pools=3, r=1))
    x = torch.randn(2, 4, *size)
    d1 = pool(x)
    d2 = pool(d1)
    d3 = pool(d2)
    expected = up(up(up(d3, d2) + d2, d1) + d1, x)
    assert torch.allclose(body(x), expected, atol=1e-6)


@pytest.mark.parametrize("pools, units", [(3, 8), (2, 5), (1, 2)])
def test_hourglass_unit_counts_match_the_caffe_layout(pools, units):
    body = HourglassMask(channels=8, pools=pools, r=1)
    assert sum(isinstance(m, ResidualUnit) for m in body.modules()) == units
    assert len(body.skips) == pools - 1


@pytest.mark.parametrize("size", [(32, 32), (33, 31), (5, 7)])
def test_mask_output_matches_trunk_shape_at_odd_sizes(size):
    for structure in MASK_BODIES:
        mask = SoftMaskBranch(ModelConfig(mask_structure=structure), 8, pools=3)
        x = torch.randn(2, 8, *size)
        assert mask(x).shape == x.shape


@pytest.mark.parametrize("structure, units", [("local_conv", 3), ("local_conv_matched", 1)])
def test_local_conv_masks_are_full_resolution_units(structure, units):
    body = MASK_BODIES[structure](8, pools=3, r=1)
    assert isinstance(body, LocalConvMask)
    assert sum(isinstance(m, ResidualUnit) for m in body.modules()) == units
    x = torch.randn(1, 8, 9, 9)
    assert body(x).shape == x.shape


# Attention-452 (r = 3) has three units per hourglass level, the matched mask still one: its branch
# costs 0.75x the hourglass's (measured 231.2M vs 308.9M multiply-adds at width 1.0). Reported, not
# redesigned: a new local_conv_matched would change what that setting trains.
UNMATCHED_452 = pytest.mark.xfail(strict=True, reason="r = 3: the matched mask branch is -25% of the hourglass's")


@pytest.mark.parametrize("depth", [56, 92, 128, 164, 236, pytest.param(452, marks=UNMATCHED_452)])
def test_matched_local_conv_mask_branch_costs_the_hourglass_branchs_macs(depth):
    """Table 4 compares masks of "the same number of FLOPs": the matched local-conv mask branches
    (body + head, every module) cost within 10% of the hourglass branches' multiply-adds; the
    literal three-unit ones do not (1.83x). At width 0.25 every convolution of a branch costs 1/16
    of its width-1.0 cost (the channels and the bottleneck are exact quarters), so the ratios are
    the paper width's."""
    from resattn import ModelConfig, build_model
    from resattn.summary import mask_branch_cost

    macs = {
        s: mask_branch_cost(build_model(ModelConfig(depth=depth, mask_structure=s, width=0.25)))["macs"]
        for s in ("hourglass", "local_conv_matched", "local_conv")
    }
    assert abs(macs["local_conv_matched"] / macs["hourglass"] - 1) <= 0.10
    assert macs["local_conv"] / macs["hourglass"] > 1.5


def test_the_mask_branch_cost_is_its_bodys_and_heads():
    """mask_branch_cost's rows are the masks' own modules: the head's two 1x1 convs cost 2 C^2 per
    pixel, one full-resolution unit (the matched body) C^2 (1/4 + 9/16 + 1/4) per pixel."""
    from resattn import ModelConfig, build_model
    from resattn.summary import mask_branch_cost

    net = build_model(ModelConfig(depth=92, mask_structure="local_conv_matched", width=0.25))
    cost = mask_branch_cost(net)
    for row, c, size in zip(cost["stages"], (16, 32, 64), (32, 16, 8)):
        modules = 2  # Attention-92: two per stage
        assert row["head_macs"] == modules * 2 * c * c * size * size
        assert row["body_macs"] == modules * c * c * size * size * 17 // 16
        masks = [m.mask for n, m in net.attention_modules() if n.startswith(f"stages.{row['stage'] - 1}.")]
        assert row["body_params"] + row["head_params"] == sum(p.numel() for m in masks for p in m.parameters())
    assert cost["macs"] == sum(r["body_macs"] + r["head_macs"] for r in cost["stages"])
    assert mask_branch_cost(build_model(ModelConfig(attention_learning="none", width=0.25))) is None


def _capture(module: AttentionModule, mask_value: float | None, x: torch.Tensor):
    """Trunk output and the tensor fed to the post-processing units (H), with the mask forced."""
    seen = {}
    hooks = [
        module.trunk.register_forward_hook(lambda m, i, o: seen.__setitem__("trunk", o.clone())),
        module.post.register_forward_pre_hook(lambda m, i: seen.__setitem__("h", i[0].clone())),
    ]
    if mask_value is not None:
        hooks.append(module.mask.register_forward_hook(lambda m, i, o: torch.full_like(o, mask_value)))
    module(x)
    for h in hooks:
        h.remove()
    return seen["trunk"], seen["h"]


@pytest.mark.parametrize("rule, value", [("arl", 0.0), ("nal", 1.0)])
def test_neutral_mask_returns_the_trunk_exactly(rule, value):
    module = AttentionModule(ModelConfig(attention_learning=rule), 8, pools=2).eval()
    trunk, h = _capture(module, value, torch.randn(2, 8, 16, 16))
    assert torch.equal(trunk, h)


def test_arl_and_nal_follow_equations_1_and_3():
    x = torch.randn(2, 8, 16, 16)
    for rule, combine in (("arl", lambda m, t: (1 + m) * t), ("nal", lambda m, t: m * t)):
        module = AttentionModule(ModelConfig(attention_learning=rule), 8, pools=2).eval()
        mask_out = {}
        module.mask.register_forward_hook(lambda m, i, o, seen=mask_out: seen.__setitem__("m", o))
        trunk, h = _capture(module, None, x)
        assert torch.allclose(h, combine(mask_out["m"], trunk))


def test_no_attention_module_has_no_mask_and_passes_the_trunk():
    module = AttentionModule(ModelConfig(attention_learning="none"), 8).eval()
    assert module.mask is None
    trunk, h = _capture(module, None, torch.randn(1, 8, 8, 8))
    assert torch.equal(trunk, h)


@pytest.mark.parametrize("p, t, r", [(1, 2, 1), (2, 4, 3), (0, 1, 2)])
def test_module_unit_counts_follow_p_t_r(p, t, r):
    module = AttentionModule(ModelConfig(p=p, t=t, r=r), 8, pools=3)
    assert len(module.pre) == len(module.post) == p and len(module.trunk) == t
    assert len(module.mask.body.bottom) == 2 * r


@pytest.mark.parametrize(
    "rule, structure, norm",
    list(itertools.product(["arl", "nal"], ["hourglass", "local_conv"], ["mixed", "channel", "spatial"])),
)
def test_module_keeps_shape(rule, structure, norm):
    config = ModelConfig(attention_learning=rule, mask_structure=structure, normalization=norm)
    module = AttentionModule(config, 8, pools=2)
    x = torch.randn(2, 8, 15, 15)
    assert module(x).shape == x.shape


GATE_NAMES = [b for b in GATE_BLOCKS if GATE_BLOCKS[b] is not None]


@pytest.mark.parametrize("name", GATE_NAMES)
def test_gate_blocks_return_their_input_times_a_gate_in_0_1(name):
    block = GATE_BLOCKS[name](16).eval()
    x = torch.rand(3, 16, 8, 8) + 0.1  # positive: the gate is out / x
    out = block(x)
    assert out.shape == x.shape
    gate = out / x
    assert (gate > 0).all() and (gate < 1).all()


@pytest.mark.parametrize("name", GATE_NAMES)
@pytest.mark.parametrize("learning", ["arl", "nal"])
def test_a_gate_block_fuses_with_the_learning_rule(name, learning):
    """ARL: H = (1 + M) T = T + block(T); NAL: H = M T = block(T); the block reads the trunk T."""
    module = AttentionModule(ModelConfig(attention_learning=learning, attention_block=name), 16).eval()
    assert module.mask is None and module.block is not None
    seen = {}
    module.block.register_forward_hook(lambda m, i, o: seen.update(block_in=i[0], block_out=o))
    x = torch.randn(2, 16, 8, 8)
    trunk, h = _capture(module, None, x)
    assert torch.equal(seen["block_in"], trunk)
    expected = trunk + seen["block_out"] if learning == "arl" else seen["block_out"]
    assert torch.allclose(h, expected)


def _gate_cost(name: str, c: int, positions: int) -> tuple[int, int]:
    """Parameters and multiply-adds per image of timm's block on a C-channel map of ``positions``
    pixels, by the block's design."""
    import math

    from timm.layers.helpers import make_divisible

    if name == "se":  # 1x1 convs C -> rd -> C with biases, on the pooled 1x1 map
        rd = make_divisible(c / 16, 8, round_limit=0.0)
        return 2 * c * rd + rd + c, 2 * c * rd
    if name == "eca":  # one 1-D conv across the pooled channels, kernel from log2(C)
        t = int(abs(math.log(c, 2) + 1) / 2)
        k = max(t if t % 2 else t + 1, 3)
        return k, k * c
    rd = make_divisible(c / 16, 1, round_limit=0.0)  # cbam: a shared MLP (no bias) on the avg and max pools,
    return 2 * c * rd + 2 * 49 + 2, 2 * 2 * c * rd + 2 * 49 * positions  # then a 7x7 conv (2 -> 1) + BN


@pytest.mark.parametrize("name", GATE_NAMES)
def test_gate_block_networks_cost_what_their_blocks_add(name):
    from resattn import ModelConfig, build_model
    from resattn.network import CIFAR_WIDTHS
    from resattn.summary import model_cost

    base = model_cost(build_model(ModelConfig(depth=56, attention_learning="none")))
    gated = model_cost(build_model(ModelConfig(depth=56, attention_block=name)))
    per_stage = [_gate_cost(name, c, size * size) for c, size in zip(CIFAR_WIDTHS, (32, 16, 8))]
    assert gated["params"] - base["params"] == sum(p for p, _ in per_stage)  # 1 module per stage
    assert gated["macs"] - base["macs"] == sum(m for _, m in per_stage)
    assert gated["macs"] < 1.05 * base["macs"]  # cheap: within 5% of the plain trunk
