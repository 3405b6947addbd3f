import pytest
import torch

from resattn import ModelConfig, build_model
from resattn.probes import (
    BINS,
    QUANTILES,
    ResponseProbe,
    histogram_quantiles,
    mask_maps,
    mask_names,
    module_names,
    quantile_key,
)
from resattn.summary import model_cost


@pytest.mark.parametrize(
    "learning, normalization", [("arl", "mixed"), ("nal", "mixed"), ("none", "mixed"), ("arl", "channel")]
)
def test_probe_matches_a_direct_computation(learning, normalization):
    net = build_model(
        ModelConfig(depth=92, attention_learning=learning, normalization=normalization, width=0.125)
    ).eval()
    batches = [torch.randn(3, 3, 32, 32), torch.randn(5, 3, 32, 32)]
    outputs, masks, fused = {}, {}, {}
    hooks = [
        s.register_forward_hook(lambda m, i, o, k=k: outputs.setdefault(k, []).append(o))
        for k, s in enumerate(net.stages, 1)
    ]
    hooks += [
        m.register_forward_hook(lambda mod, i, o, k=k: masks.setdefault(k, []).append(o))
        for k, m in mask_names(net).items()
    ]
    hooks += [  # H, the fusion of trunk and mask, is what the module's post-processing units read
        m.post.register_forward_pre_hook(lambda mod, i, k=k: fused.setdefault(k, []).append(i[0]))
        for k, m in module_names(net).items()
    ]
    probe = ResponseProbe().attach(net)
    with torch.no_grad():
        for x in batches:
            net(x)
    result = probe.compute()
    for h in hooks:
        h.remove()

    per_image = {k: torch.cat([o.abs().mean((1, 2, 3)) for o in v]) for k, v in outputs.items()}
    first = per_image[1].mean().item()
    for k, v in per_image.items():
        assert result[f"stage{k}_mean_abs"] == pytest.approx(v.mean().item(), rel=1e-5)
        assert result[f"stage{k}_rel"] == pytest.approx(v.mean().item() / first, rel=1e-5)
    assert result["stage1_rel"] == 1.0
    assert len(fused) == 6
    for name, outs in fused.items():
        value = torch.cat([o.abs().mean((1, 2, 3)) for o in outs]).mean().item()
        assert result[f"{name}_fused_abs"] == pytest.approx(value, rel=1e-5)
        assert result[f"{name}_fused_rel"] == pytest.approx(value / first, rel=1e-5)
    assert len([k for k in result if k.endswith("_mean") and k.startswith("s")]) == (6 if learning != "none" else 0)
    for name, outs in masks.items():
        values = torch.cat([o.flatten() for o in outs]).double()
        assert result[f"{name}_mean"] == pytest.approx(values.mean().item(), abs=1e-5)
        assert result[f"{name}_std"] == pytest.approx(values.std(unbiased=False).item(), abs=1e-4)
        summarised = values.abs() if normalization == "channel" else values  # f2: |M|
        for q in QUANTILES:  # read off the histogram: within a bin of the exact quantile
            exact = torch.quantile(summarised, q).item()
            assert result[f"{name}_{quantile_key(q)}"] == pytest.approx(exact, abs=1.5 / BINS)
    if normalization == "channel":  # |M| near 1/sqrt(C), far below the 0.5 of a sigmoid at zero
        assert all(result[f"{name}_q50"] < 0.5 for name in masks)
    for stage in (1, 2, 3):
        if masks:
            pooled = torch.cat([o.flatten() for k, v in masks.items() if k.startswith(f"s{stage}m") for o in v])
            pooled = pooled.abs() if normalization == "channel" else pooled
            assert result[f"s{stage}_mask_q50"] == pytest.approx(torch.quantile(pooled, 0.5).item(), abs=1.5 / BINS)


def test_histogram_quantiles_interpolate_within_bins():
    assert histogram_quantiles([1, 1, 1, 1], (0.5, 0.25, 0.75)) == {"q50": 0.5, "q25": 0.25, "q75": 0.75}
    assert histogram_quantiles([0, 4, 0, 0], (0.05, 0.5)) == pytest.approx({"q05": 0.2625, "q50": 0.375})
    assert histogram_quantiles([0, 0, 0, 2], (0.95,)) == pytest.approx({"q95": 0.9875})


def test_probe_detaches_its_hooks():
    net = build_model(ModelConfig(depth=56, width=0.125))
    probe = ResponseProbe().attach(net)
    net(torch.randn(2, 3, 32, 32))
    probe.compute()
    assert all(not s._forward_hooks for s in net.stages)
    assert ResponseProbe().compute() == {}


def test_mask_names_are_stage_and_module():
    net = build_model(ModelConfig(depth=92, width=0.125))
    assert list(mask_names(net)) == ["s1m1", "s1m2", "s2m1", "s2m2", "s3m1", "s3m2"]


def _probe_on(net, *batches):
    probe = ResponseProbe().attach(net)
    with torch.no_grad():
        for x in batches:
            net(x)
    probe.detach()
    return probe


def test_probe_states_are_sums_that_merge_across_shards():
    """What DDP does in compute(): summing two shards' states gives the statistics of all the data."""
    net = build_model(ModelConfig(depth=56, width=0.125)).eval()
    a, b = torch.randn(3, 3, 32, 32), torch.randn(4, 3, 32, 32)  # shards of different sizes
    whole = _probe_on(net, a, b).compute()
    alone = _probe_on(net, a).compute()
    shard = _probe_on(net, a)
    shard.merge_state(_probe_on(net, b))
    merged = shard.compute()
    assert merged.keys() == whole.keys() and alone != whole
    assert all(merged[k] == pytest.approx(whole[k], rel=1e-9, abs=1e-12) for k in whole)
    assert all(fx.__name__ == "dim_zero_sum" for fx in shard._reductions.values())
    assert shard.stage_sums.dtype == shard.mask_sums.dtype == shard.mask_hist.dtype == torch.float64
    assert shard.state_dict() == {}  # not persistent: in no checkpoint


def test_probe_reset_clears_the_sums_and_attach_rebinds():
    net = build_model(ModelConfig(depth=92, width=0.125)).eval()
    probe = _probe_on(net, torch.randn(2, 3, 32, 32))
    assert probe.stage_sums.shape == (3, 2) and probe.mask_sums.shape == (6, 3)
    assert probe.mask_hist.shape == (6, BINS) and probe.fused_sums.shape == (6, 2)
    assert probe.stage_sums[:, 1].tolist() == [2, 2, 2]
    probe.reset()
    assert not probe.stage_sums.any() and not probe.mask_sums.any() and probe.compute() == {}
    plain = build_model(ModelConfig(depth=56, width=0.125, attention_learning="none")).eval()
    probe.attach(plain)
    with torch.no_grad():
        plain(torch.randn(2, 3, 32, 32))
    result = probe.compute()
    assert probe.mask_sums.shape == (0, 3) and sorted(result) == sorted(
        [f"stage{i}_{k}" for i in (1, 2, 3) for k in ("mean_abs", "rel")]
        + [f"s{i}m1_fused_{k}" for i in (1, 2, 3) for k in ("abs", "rel")]
    )


def test_masks_and_cost_of_a_float64_network():
    """A ``64-true`` run's network holds float64 weights: its stored masks (from float images) and its
    cost are computed as for a float32 one."""
    net = build_model(ModelConfig(depth=56, width=0.125))
    cost = model_cost(net)
    net.double()
    assert model_cost(net) == cost
    maps = mask_maps(net, torch.rand(2, 3, 32, 32))
    assert set(maps) == set(mask_names(net)) and all(
        m.shape[0] == 2 and m.dtype == torch.float32 for m in maps.values()
    )
