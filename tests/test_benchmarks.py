import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import throughput  # noqa: E402


def test_throughput_benchmark_runs_and_reports_every_column(capsys):
    rows = throughput.main(
        [
            "--depth",
            "56",
            "--width",
            "0.125",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--data-images",
            "2000",
        ]
    )
    out = capsys.readouterr().out
    assert "Machine: cpu:" in out and "matmul peak" in out
    assert out.count("| Attention-56 | 0.125 |") == 1
    row = rows[0]
    assert row["plain"] > 0 and row["lightning"] > 0 and row["flops"] > 0


def test_the_packing_benchmark_compares_packed_and_separate_runs(capsys):
    rows = throughput.main(
        ["--packed", "2", "--depth", "56", "--width", "0.125", "--steps", "1", "--warmup", "1", "--repeats", "1"]
    )
    out = capsys.readouterr().out
    assert "packed / separate" in out and [r["k"] for r in rows] == [2]
    assert all(r["packed"] > 0 and r["separate"] > 0 for r in rows)
