"""A real two-process DDP test pass (CPU, gloo) against a one-process one on the same data and weights."""

import json

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback

from resattn.data import CIFARDataModule
from resattn.module import ResidualAttentionClassifier


class SaveProbe(Callback):
    """Each rank writes its ``probe_results`` (module level: pickled into the spawned processes)."""

    def __init__(self, folder):
        self.folder = folder

    def on_test_end(self, trainer, pl_module):
        path = self.folder / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(pl_module.probe_results))


def _probe(tmp_path, name, weights, **trainer_kwargs) -> list[dict[str, float]]:
    folder = tmp_path / name
    folder.mkdir()
    model = ResidualAttentionClassifier(depth=56, width=0.125)
    model.load_state_dict(weights)
    # 41 test images: rank 0 gets 21 (3 batches), rank 1 gets 20 (idx[rank::2], no padding)
    data = CIFARDataModule(dataset="synthetic", synthetic_size=(64, 41), eval_batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[SaveProbe(folder)],
        **trainer_kwargs,
    )
    trainer.test(model, data, verbose=False)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]


@pytest.mark.slow
def test_ddp_probe_covers_every_rank_data(tmp_path):
    L.seed_everything(0)
    weights = ResidualAttentionClassifier(depth=56, width=0.125).state_dict()
    (single,) = _probe(tmp_path, "one", weights, devices=1)
    ranks = _probe(tmp_path, "two", weights, devices=2, strategy="ddp_spawn")
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # every rank gets the same, synced values
    assert len(single) == 3 * 2 + 3 * 2 + 3 * 7 + 3 * 5  # stages, fusions, masks, stages' mask quantiles
    assert ranks[0].keys() == single.keys()
    for key, value in single.items():
        assert ranks[0][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
