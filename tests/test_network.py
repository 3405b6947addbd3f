import itertools
from collections import Counter

import pytest
import torch

from resattn import ModelConfig, build_model
from resattn.config import ATTENTION_BLOCKS, ATTENTION_LEARNING, MASK_STRUCTURES, NORMALIZATIONS, PRESETS

SWITCHES = list(itertools.product(ATTENTION_LEARNING, MASK_STRUCTURES, NORMALIZATIONS))
GATES = [b for b in ATTENTION_BLOCKS if b != "soft_mask"]


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


ALL = [(*s, "soft_mask") for s in SWITCHES] + [(lr, "hourglass", "mixed", b) for lr in ("arl", "nal") for b in GATES]
# every value of every switch at least once in the fast tier; the whole product in the slow one
CORE = {
    ("arl", "hourglass", "mixed", "soft_mask"),
    ("nal", "local_conv", "channel", "soft_mask"),
    ("none", "hourglass", "mixed", "soft_mask"),
    ("arl", "local_conv_matched", "spatial", "soft_mask"),
    ("arl", "hourglass", "mixed", "se"),
    ("nal", "hourglass", "mixed", "cbam"),
    ("arl", "hourglass", "mixed", "eca"),
}


@pytest.mark.parametrize(
    "learning, structure, norm, block",
    [c if c in CORE else pytest.param(*c, marks=pytest.mark.slow) for c in ALL],
)
def test_no_module_is_used_twice_and_every_parameter_gets_a_gradient(learning, structure, norm, block):
    net = build_model(
        ModelConfig(
            depth=56,
            attention_learning=learning,
            mask_structure=structure,
            normalization=norm,
            attention_block=block,
            width=0.125,
        )
    )
    calls = Counter()
    leaves = [m for m in net.modules() if not list(m.children())]
    # CBAM's shared MLP reads the average and the max pool by design: inside gate blocks, a leaf may run twice
    shared = {id(m) for n, m in net.named_modules() if ".block." in n and block == "cbam"}
    hooks = [m.register_forward_hook(lambda m, i, o: calls.update([id(m)])) for m in leaves]
    net(torch.randn(4, 3, 32, 32)).square().mean().backward()
    for h in hooks:
        h.remove()
    assert max(v for k, v in calls.items() if k not in shared) == 1, "a module instance runs in two places"
    assert all(calls[id(m)] >= 1 for m in leaves if list(m.parameters())), "a layer never runs"
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing[:5]}"


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
