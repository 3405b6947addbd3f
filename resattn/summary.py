"""Model cost: parameters, multiply-adds and FLOPs of a configuration (``python -m resattn summary``)."""

from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from resattn.attention import AttentionModule
from resattn.config import ModelConfig
from resattn.gates import gate_sizes
from resattn.layers import ResidualUnit
from resattn.network import ResidualAttentionNetwork, build_model

INPUT_SIZE = {"cifar": 32, "imagenet": 224}


def model_cost(net: ResidualAttentionNetwork) -> dict:
    """Parameters, multiply-adds and FLOPs (= 2 x MACs, convolutions and the FC layer) for one image."""
    size = INPUT_SIZE[net.config.family]
    counter = FlopCounterMode(display=False)
    was_training = net.training
    net.eval()
    weight = next(net.parameters())
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size, device=weight.device, dtype=weight.dtype))
    net.train(was_training)
    flops = counter.get_total_flops()
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "macs": flops // 2,
        "flops": flops,
        "input_size": [3, size, size],
    }


def gate_stages(net: ResidualAttentionNetwork) -> dict[str, list[dict]]:
    """The sizes of the gate blocks ``net`` has, per stage (:func:`resattn.gates.gate_sizes`; every
    gate of a stage has the stage's channel count C): under ``attention_block``, the gate used as
    each attention module's mask; under ``unit_gate``, the gate on every trunk unit's branch. Empty
    when the network has no gate block."""
    gates: dict[str, list[dict]] = {}
    for number, stage in enumerate(net.stages, 1):
        modules = [m for m in stage.modules() if isinstance(m, AttentionModule)]
        placed = {
            "attention_block": [m.block for m in modules if m.block is not None],
            "unit_gate": [m.gate for m in stage.modules() if isinstance(m, ResidualUnit) and m.gate is not None],
        }
        channels = stage[0].conv3[-1].out_channels
        for placement, blocks in placed.items():
            if blocks:
                gates.setdefault(placement, []).append({"stage": number, "channels": channels, **gate_sizes(blocks[0])})
    return gates


def summary(config: ModelConfig) -> dict:
    """The configuration, its cost, the paper's parameter count where it states one, and the sizes
    of its gate blocks (:func:`gate_stages`)."""
    net = build_model(config)
    cost = model_cost(net)
    return {
        "name": config.name,
        "config": config.to_dict(),
        **cost,
        "params_millions": round(cost["params"] / 1e6, 3),
        "gmacs": round(cost["macs"] / 1e9, 3),
        "paper_params_millions": config.paper_params,
        "gates": gate_stages(net),
    }


def main(argv: list[str] | None = None) -> dict:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m resattn summary", description=__doc__)
    parser.add_class_arguments(ModelConfig)
    args = parser.parse_args(argv)
    try:
        config = ModelConfig(**vars(args))
    except ValueError as err:
        parser.error(str(err))  # one line, exit 2
    result = summary(config)
    print(json.dumps(result, indent=2))
    return result
