import inspect
from dataclasses import fields

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from resattn.config import ModelConfig
from resattn.data import CIFARDataModule
from resattn.module import ResidualAttentionClassifier


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        deterministic=True,
    )
    return L.Trainer(**{**defaults, **kwargs})


class LrRecorder(Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_optimizer_and_step_schedule(tmp_path):
    model = ResidualAttentionClassifier(width=0.125, probes=False)
    data = CIFARDataModule(dataset="synthetic", synthetic_size=(160, 32), batch_size=16)
    recorder = LrRecorder()
    _trainer(tmp_path, max_epochs=2, callbacks=[recorder], limit_val_batches=0).fit(model, data)
    opt = model.trainer.optimizers[0]
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and group["nesterov"] and group["momentum"] == 0.9
    assert group["weight_decay"] == 1e-4
    # 20 steps: divided by 10 at 40% (step 8) and 60% (step 12), like 64k and 96k of 160k
    assert recorder.lrs == pytest.approx([0.1] * 8 + [0.01] * 4 + [0.001] * 8)


def test_the_flat_model_settings_are_the_model_configs_fields():
    """The classifier's network arguments (its ``model.*`` flags) are ModelConfig's fields, with
    their types and defaults; the network it builds is made from the one ModelConfig they give."""
    arguments = inspect.signature(ResidualAttentionClassifier).parameters
    for field in fields(ModelConfig):
        if field.init:
            argument = arguments[field.name]
            assert (argument.annotation, argument.default) == (field.type, field.default), field.name
    model = ResidualAttentionClassifier(depth=92, unit_gate="se", width=0.125, lr=0.05)
    assert model.config == model.net.config == ModelConfig(depth=92, unit_gate="se", width=0.125)


def test_rejects_bad_milestones():
    with pytest.raises(ValueError, match="lr_milestones"):
        ResidualAttentionClassifier(lr_milestones=(0.6, 0.4))


@pytest.mark.slow
def test_fit_on_synthetic_data_ends_well_above_chance(tmp_path):
    L.seed_everything(0)
    model = ResidualAttentionClassifier(width=0.25, lr_milestones=(0.7, 0.9))
    data = CIFARDataModule(dataset="synthetic", synthetic_size=(2000, 500), batch_size=64)
    trainer = _trainer(tmp_path, max_epochs=8)
    trainer.fit(model, data)
    metrics = dict(trainer.callback_metrics)
    assert metrics["probe/stage1_rel"] == 1.0 and 0 < metrics["probe/stage3_rel"]
    assert 0 <= metrics["probe/s1m1_q05"] <= metrics["probe/s1m1_q50"] <= metrics["probe/s1m1_q95"] <= 1
    assert 0 < metrics["probe/s2m1_mean"] < 1
    result = trainer.test(model, data, verbose=False)[0]
    # the probe of the final weights on the test split: the last validation's (it ran on them, on that split)
    assert model.probe_results["stage2_rel"] == pytest.approx(metrics["probe/stage2_rel"].item())
    assert result["test/acc1"] > 0.5  # chance is 0.1
    assert result["test/err1"] == pytest.approx(100 * (1 - result["test/acc1"]))  # errors in percent


@pytest.mark.slow
def test_fit_on_cifar_files_reports_the_final_weights(tmp_path, cifar10_dir):
    L.seed_everything(0)
    model = ResidualAttentionClassifier(width=0.125, attention_learning="nal", normalization="spatial")
    data = CIFARDataModule(data_dir=str(cifar10_dir), batch_size=20, label_noise=0.1)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, data)
    reported = trainer.test(model, data, verbose=False)[0]["test/acc1"]
    model.eval()
    _, y = data.images("test")
    with torch.no_grad():
        direct = (model(next(iter(data.test_dataloader()))[0]).argmax(1) == y).float().mean().item()
    assert reported == pytest.approx(direct)
    assert data.noise_rate is not None and 0 < data.noise_rate < 0.3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_probe_results_are_logged_and_kept_out_of_checkpoints(tmp_path):
    model = ResidualAttentionClassifier(width=0.125)
    data = CIFARDataModule(dataset="synthetic", synthetic_size=(32, 13), eval_batch_size=8)
    trainer = _trainer(tmp_path)
    trainer.validate(model, data, verbose=False)  # logs the probe, keeps nothing
    assert model.probe_results == {}
    logged = {k[6:]: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("probe/")}
    trainer.test(model, data, verbose=False)  # the tested weights' probe is kept (val_size 0: the same data)
    results = model.probe_results
    # 3 stages (mean_abs, rel), 3 modules (fused abs, rel), 3 masks (mean, std, 5 quantiles), 3 stages' quantiles
    assert results["stage1_rel"] == 1.0 and len(results) == 3 * 2 + 3 * 2 + 3 * 7 + 3 * 5
    assert model.probe.stage_sums[:, 1].tolist() == [13, 13, 13]  # every image of both batches
    assert logged.keys() == results.keys() and all(logged[k] == pytest.approx(v) for k, v in results.items())
    assert not model.probe._handles and not any(s._forward_hooks for s in model.net.stages)
    state = model.state_dict()
    assert not any(k.startswith("probe") for k in state)  # checkpoints of older and newer code load alike
    ResidualAttentionClassifier(width=0.125).load_state_dict(state, strict=True)
