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


def _counted(net: ResidualAttentionNetwork) -> FlopCounterMode:
    """The FLOP counter after one image through ``net`` in eval mode (its mode is restored)."""
    size = INPUT_SIZE[net.config.family]
    counter = FlopCounterMode(display=False)
    was_training = net.training
    net.eval()
    weight = next(net.parameters())
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size, device=weight.device, dtype=weight.dtype))
    net.train(was_training)
    return counter


def model_cost(net: ResidualAttentionNetwork) -> dict:
    """Parameters, multiply-adds and FLOPs (= 2 x MACs, convolutions and the FC layer) for one image."""
    flops = _counted(net).get_total_flops()
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "macs": flops // 2,
        "flops": flops,
        "input_size": [3, INPUT_SIZE[net.config.family], INPUT_SIZE[net.config.family]],
    }


def mask_branch_cost(net: ResidualAttentionNetwork) -> dict | None:
    """The soft mask branches' own cost for one image, what Table 4's "same number of FLOPs" compares
    (PAPER.md section 1, "Soft mask branch, local convolutions"): per stage, the multiply-adds and
    parameters of the masks' bodies and heads summed over the stage's attention modules, and the
    totals. None when ``net`` has no soft mask.

    At width 1.0 and r = 1 (CIFAR 56 to 236) one full-resolution unit (``local_conv_matched``)
    costs 1.03x / 1.14x / 2.00x the hourglass body in stages 1 / 2 / 3 (+28% over the bodies), and
    the head, the same in both, is 70% of the hourglass branch: the matched branch costs +8.2% of
    the hourglass branch's multiply-adds, with 0.61x its parameters (the hourglass has 8 / 5 / 2
    units per module, the matched mask 1). Attention-452 (r = 3) triples the hourglass's units but
    not the matched mask's: -25%.
    """
    masks = [(name, module.mask) for name, module in net.attention_modules() if module.mask is not None]
    if not masks:
        return None
    counts = _counted(net).get_flop_counts()  # per module, by its name under the root's class name
    root = type(net).__name__
    stages: dict[int, dict] = {}
    for name, mask in masks:
        stage = int(name.split(".")[1]) + 1  # stages.<i>.<j>
        row = stages.setdefault(
            stage, {"stage": stage, "body_macs": 0, "head_macs": 0, "body_params": 0, "head_params": 0}
        )
        for part in ("body", "head"):
            row[f"{part}_macs"] += sum(counts.get(f"{root}.{name}.mask.{part}", {}).values()) // 2
            row[f"{part}_params"] += sum(p.numel() for p in getattr(mask, part).parameters())
    rows = list(stages.values())
    return {
        "stages": rows,
        "macs": sum(r["body_macs"] + r["head_macs"] for r in rows),
        "params": sum(r["body_params"] + r["head_params"] for r in rows),
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
    """The configuration, its cost, the paper's parameter count where it states one, the sizes of
    its gate blocks (:func:`gate_stages`) and its soft masks' own cost (:func:`mask_branch_cost`)."""
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
        "mask_branch": mask_branch_cost(net),
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
