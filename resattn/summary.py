"""Model cost: parameters, multiply-adds and FLOPs of a configuration (``python -m resattn summary``)."""

from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from resattn.config import ModelConfig
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


def summary(config: ModelConfig) -> dict:
    """The configuration, its cost, and the paper's parameter count where it states one."""
    cost = model_cost(build_model(config))
    return {
        "name": config.name,
        "config": config.to_dict(),
        **cost,
        "params_millions": round(cost["params"] / 1e6, 3),
        "gmacs": round(cost["macs"] / 1e9, 3),
        "paper_params_millions": config.paper_params,
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
