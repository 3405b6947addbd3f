"""The residual unit (resattn/layers.py): with a gate block on its branch (``unit_gate``), the gate
multiplies the residual branch before the identity add, as SE, CBAM and ECA place their blocks."""

import pytest
import torch

from resattn.gates import GATES
from resattn.layers import ResidualUnit

SHAPES = [(16, 16, 1), (8, 16, 2)]  # (in, out, stride): the identity shortcut; a strided projection


def _units(name: str, cin: int, cout: int, stride: int) -> tuple[ResidualUnit, ResidualUnit]:
    """A gated unit, and the plain unit with the same weights (the gated one's but its gate)."""
    torch.manual_seed(0)
    gated = ResidualUnit(cin, cout, stride, GATES[name]).eval()
    plain = ResidualUnit(cin, cout, stride).eval()
    extra = set(gated.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("gate.") for k in extra)  # a plain unit's state is unchanged
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k not in extra})
    return gated, plain


def _shortcut(unit: ResidualUnit, x: torch.Tensor) -> torch.Tensor:
    return x if unit.downsample is None else unit.downsample(torch.relu(unit.bn1(x)))


@pytest.mark.parametrize("cin, cout, stride", SHAPES)
@pytest.mark.parametrize("name", list(GATES))
def test_the_gate_multiplies_the_branch_before_the_identity_add(name, cin, cout, stride):
    """out = shortcut(x) + g(F) * F, with F the last conv's output and g in (0, 1)."""
    gated, _ = _units(name, cin, cout, stride)
    seen = {}
    gated.conv3.register_forward_hook(lambda m, i, o: seen.update(branch=o.clone()))
    gated.gate.register_forward_hook(lambda m, i, o: seen.update(gate_in=i[0].clone(), gate_out=o.clone()))
    x = torch.randn(2, cin, 12, 12)
    out = gated(x)
    assert torch.equal(seen["gate_in"], seen["branch"])
    assert torch.allclose(out, _shortcut(gated, x) + seen["gate_out"], atol=1e-6)
    branch, gate_out = seen["branch"], seen["gate_out"]
    ratio = (gate_out / branch)[branch.abs() > 1e-3]  # g, where F is not ~0
    assert (ratio > 0).all() and (ratio < 1).all()


@pytest.mark.parametrize("cin, cout, stride", SHAPES)
@pytest.mark.parametrize("name", list(GATES))
def test_a_gate_forced_to_1_is_the_plain_unit_and_forced_to_0_its_shortcut(name, cin, cout, stride):
    gated, plain = _units(name, cin, cout, stride)
    x = torch.randn(2, cin, 12, 12)
    one = gated.gate.register_forward_hook(lambda m, i, o: i[0])  # g = 1: the block returns F
    assert torch.equal(gated(x), plain(x))
    one.remove()
    gated.gate.register_forward_hook(lambda m, i, o: torch.zeros_like(o))  # g = 0: the branch is gone
    assert torch.equal(gated(x), _shortcut(gated, x))
    assert not torch.allclose(plain(x), _shortcut(plain, x))  # the branch matters: the test above can fail
