import itertools
from collections import Counter
from typing import get_args

import pytest
import torch

from resattn import ModelConfig, build_model
from resattn.config import PRESETS, AttentionLearning, MaskStructure, Normalization
from resattn.gates import GATES
from resattn.layers import ResidualUnit

SWITCHES = list(itertools.product(*map(get_args, (AttentionLearning, MaskStructure, Normalization))))


@pytest.mark.parametrize("family, depth", [k for k in PRESETS if k[0] == "cifar"])
def test_cifar_shapes(family, depth):
    net = build_model(ModelConfig(depth=depth, width=0.125, num_classes=100))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("depth", [56, 92])
def test_imagenet_shapes_and_7x7_smallest_mask(depth):
    net = build_model(ModelConfig(depth=depth, family="imagenet", width=0.0625, num_classes=1000)).eval()
    sizes = []
    hooks = [
        m.mask.body.bottom.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
        for _, m in net.attention_modules()
    ]
    assert net(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert set(sizes) == {7}
    for h in hooks:
        h.remove()


def test_cifar_smallest_mask_map_is_4x4():
    net = build_model(ModelConfig(depth=56, width=0.125)).eval()
    sizes = []
    for _, m in net.attention_modules():
        m.mask.body.bottom.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    net(torch.randn(1, 3, 32, 32))
    assert sizes == [4, 4, 4]


def test_odd_input_size():
    net = build_model(ModelConfig(depth=56, width=0.125))
    assert net(torch.randn(2, 3, 37, 29)).shape == (2, 10)


ALL = (
    [(*s, "soft_mask", "none") for s in SWITCHES]
    + [(lr, "hourglass", "mixed", b, "none") for lr in ("arl", "nal") for b in GATES]
    + [(lr, "hourglass", "mixed", "soft_mask", g) for lr in ("none", "arl") for g in GATES]
)
# every value of every switch at least once in the fast tier; the whole product in the slow one
CORE = {
    ("arl", "hourglass", "mixed", "soft_mask", "none"),
    ("nal", "local_conv", "channel", "soft_mask", "none"),
    ("none", "hourglass", "mixed", "soft_mask", "none"),
    ("arl", "local_conv_matched", "spatial", "soft_mask", "none"),
    ("arl", "hourglass", "mixed", "se", "none"),
    ("nal", "hourglass", "mixed", "cbam", "none"),
    ("arl", "hourglass", "mixed", "eca", "none"),
    ("none", "hourglass", "mixed", "soft_mask", "se"),
    ("none", "hourglass", "mixed", "soft_mask", "cbam"),
    ("arl", "hourglass", "mixed", "soft_mask", "eca"),
}


@pytest.mark.parametrize(
    "learning, structure, norm, block, unit_gate",
    [c if c in CORE else pytest.param(*c, marks=pytest.mark.slow) for c in ALL],
)
def test_no_module_is_used_twice_and_every_parameter_gets_a_gradient(learning, structure, norm, block, unit_gate):
    net = build_model(
        ModelConfig(
            depth=56,
            attention_learning=learning,
            mask_structure=structure,
            normalization=norm,
            attention_block=block,
            unit_gate=unit_gate,
            width=0.125,
        )
    )
    calls = Counter()
    leaves = [m for m in net.modules() if not list(m.children())]
    # CBAM's shared MLP reads the average and the max pool by design: inside its blocks, a leaf may run twice
    cbam = (".block." if block == "cbam" else None, ".gate." if unit_gate == "cbam" else None)
    shared = {id(m) for n, m in net.named_modules() if any(c and c in n for c in cbam)}
    hooks = [m.register_forward_hook(lambda m, i, o: calls.update([id(m)])) for m in leaves]
    # CBAM's channel MLP has round(C/16) hidden units, 1 at C = 8: when its one ReLU is off for the
    # whole batch (avg and max pool), its weights get no gradient. That is the block, not a wiring fault.
    acts = {n: m for n, m in net.named_modules() if n.endswith(".channel.act")}
    alive = set()
    hooks += [
        m.register_forward_hook(lambda m, i, o, n=n: alive.add(n) if (o > 0).any() else None) for n, m in acts.items()
    ]
    net(torch.randn(4, 3, 32, 32)).square().mean().backward()
    for h in hooks:
        h.remove()
    assert max(v for k, v in calls.items() if k not in shared) == 1, "a module instance runs in two places"
    assert all(calls[id(m)] >= 1 for m in leaves if list(m.parameters())), "a layer never runs"
    dead = tuple(n.removesuffix("act") for n in acts if n not in alive)
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not [n for n in missing if not n.startswith(dead)], f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize(
    "family, depth, learning", [("cifar", 92, "none"), ("cifar", 56, "arl"), ("imagenet", 56, "none")]
)
def test_a_unit_gate_is_on_every_trunk_unit_and_on_no_mask_unit(family, depth, learning):
    """(depth - 2) / 3 trunk units (the name's count), each gated; the soft masks' units are not."""
    net = build_model(
        ModelConfig(depth=depth, family=family, attention_learning=learning, unit_gate="eca", width=0.0625)
    )
    units = {n: m for n, m in net.named_modules() if isinstance(m, ResidualUnit)}
    trunk = [m for n, m in units.items() if ".mask." not in n]
    mask = [m for n, m in units.items() if ".mask." in n]
    assert len(trunk) == (depth - 2) // 3 and all(m.gate is not None for m in trunk)
    assert all(m.gate is None for m in mask) and (len(mask) > 0) == (learning != "none")


@pytest.mark.parametrize("name", GATES)
def test_unit_gate_networks_cost_what_a_gate_in_every_unit_adds(name):
    """SE-ResNet-56 (and CBAM, ECA) = ResNet-56 + one gate per unit: 6 units per stage, each gate
    costing what its design says at the stage's channels and resolution."""
    from resattn.network import CIFAR_WIDTHS
    from resattn.summary import model_cost
    from tests.test_attention import _gate_cost

    base = model_cost(build_model(ModelConfig(depth=56, attention_learning="none")))
    gated = model_cost(build_model(ModelConfig(depth=56, attention_learning="none", unit_gate=name)))
    units = (56 - 2) // 3 // 3  # per stage
    per_stage = [_gate_cost(name, c, size * size) for c, size in zip(CIFAR_WIDTHS, (32, 16, 8))]
    assert gated["params"] - base["params"] == units * sum(p for p, _ in per_stage)
    assert gated["macs"] - base["macs"] == units * sum(m for _, m in per_stage)


def test_resnet_baseline_is_the_same_trunk_without_masks():
    arl = build_model(ModelConfig(depth=164, width=0.125))
    res = build_model(ModelConfig(depth=164, attention_learning="none", width=0.125))
    trunk_names = {n for n, _ in arl.named_parameters() if ".mask." not in n}
    assert trunk_names == {n for n, _ in res.named_parameters()}


def test_he_initialisation():
    net = build_model(ModelConfig(depth=56))
    conv = net.stages[0][0].conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.15 * (2 / fan_out) ** 0.5


def test_width_scales_channels():
    assert build_model(ModelConfig(width=0.25)).fc.in_features == 64
    assert build_model(ModelConfig()).fc.in_features == 256


def test_build_model_rejects_config_and_overrides():
    with pytest.raises(TypeError):
        build_model(ModelConfig(), depth=92)
