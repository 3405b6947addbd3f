"""The claims ledger (issue #11 item 4): claims live in the study YAMLs, each report writes its
configuration's claims.csv, and reports/CLAIMS.md gathers the most faithful evidence per claim."""

import pandas as pd
import pytest

from resattn.cli.report import report_main
from resattn.report import build_report
from resattn.report.ledger import LEDGER, write_ledger
from resattn.study.spec import SpecError, available_studies, load_study
from tests.test_stats import DIFFS, HOUR
from tests.test_store import _result, _runs

PAPER_CLAIMS = {  # the claims of the paper the issue lists, by study
    "ARL_vs_NAL": {"each", "trend", "response"},
    "attention_type": {"each"},
    "mask_structure": {"each"},
    "noisy_labels": {"each", "trend"},
    "cifar_benchmarks": {"each"},
}


def test_every_study_of_a_paper_table_carries_its_claims():
    for name, kinds in PAPER_CLAIMS.items():
        assert {c.kind for c in load_study(name).claims} == kinds, name


def _mask_structure_results(profile: str, seeds: int, worse: bool = True):
    specs = {(r.variant, r.seed): r for r in _runs(profile=profile, seeds=seeds)}
    sign = 1 if worse else -1
    results = []
    for s in range(seeds):
        results.append(_result(specs["hourglass", s], test_error=HOUR[s]))
        results.append(_result(specs["local_conv_matched", s], test_error=HOUR[s] + sign * DIFFS[s]))
        results.append(_result(specs["local_conv", s], test_error=HOUR[s] + 2.0))
    return results


def test_the_ledger_takes_the_most_faithful_configuration_and_names_the_rest(tmp_path):
    study = load_study("mask_structure")
    reports = tmp_path / "reports"
    quick = _mask_structure_results("quick", 5)
    build_report(study, quick, reports / "mask_structure" / "quick")
    md, csv = write_ledger(reports)
    before = md.read_text(), csv.read_text()
    smoke = _mask_structure_results("smoke", 1, worse=False)  # synthetic data: it must not change the ledger
    build_report(study, smoke, reports / "mask_structure" / "smoke")
    assert write_ledger(reports) == [md, csv] and (md.read_text(), csv.read_text()) == before
    ledger = pd.read_csv(csv)
    row = ledger[ledger["study"] == "mask_structure"].iloc[0]
    assert row["configuration"] == "quick" and row["claim_outcome"] == "reproduced" and row["seeds"] == 5
    assert row["tier"] == "pilot" and row["test_images"] != row["test_images"]  # quick: pilot; data unrecorded
    assert row["value"] == pytest.approx(DIFFS.mean()) and row["paper"] == pytest.approx(0.96)
    assert row["precision"] == "32-true" and row["profile"] == "quick"
    text = md.read_text()
    assert "The hourglass mask beats local convolutions at equal FLOPs" in text
    assert "mask_structure: quick;" in text and "smoke" not in text.split("Configurations with claims")[1]
    claims = {c.text for n in available_studies() for c in load_study(n).claims}
    assert set(ledger["claim"]) == claims  # one row (or more: its evidence) per claim of every study
    not_run = ledger[ledger["study"] == "noisy_labels"]
    assert set(not_run["claim_outcome"]) == {"not run"}
    assert "He et al." in text  # Table 6's ResNet-164 numbers are from another protocol: said
    line = next(x for x in text.splitlines() if x.startswith("| The hourglass mask beats local"))
    assert "**pilot: consistent with the paper's direction" in line and "reproduced" not in line
    assert "`quick`: **pilot** (data unrecorded; " in line and "width 0.25 (paper 1)" in line
    assert "hourglass 6.0% (paper 5.52%)" in line  # the reference's error beside the paper's


def test_report_claims_rebuilds_the_ledger_alone(tmp_path, capsys):
    reports = tmp_path / "reports"
    build_report(load_study("mask_structure"), _mask_structure_results("quick", 3), reports / "mask_structure" / "q")
    assert report_main(["--claims", "--reports-dir", str(reports)]) == 0
    assert (reports / f"{LEDGER}.md").is_file() and "Claims ledger" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        report_main(["--reports-dir", str(reports)])  # neither a study nor --claims
    assert stop.value.code == 2


@pytest.mark.parametrize(
    "claims, words",
    [
        ("[{claim: x}]", ["claims[0]", "exactly one of each, trend, response"]),
        ("[{claim: x, each: [deep]}]", ["claims[0].each", "a non-empty list of variants", "56"]),
        ("[{claim: x, trend: {factor: colour, of: [56]}}]", ["claims[0].trend.factor", "depth"]),
        ("[{claim: x, trend: {factor: depth, of: [56], per: 0}}]", ["claims[0].trend.per", "> 0"]),
        ("[{claim: x, each: [56], colour: red}]", ["claims[0].colour"]),
        ("{claim: x}", ["claims", "a list of claims"]),
        ("[{claim: x, each: [92], against: {depth: 560}}]", ["claims[0].against.depth", "one of 56, 92", "mean 56"]),
        ("[{claim: x, each: [92], against: {dept: 56}}]", ["claims[0].against", "a factor of this study (depth)"]),
        ("[{claim: x, trend: {factor: depth, of: [56, 92]}, expect: higher}]", ["claims[0].expect", "with `each`"]),
    ],
)
def test_malformed_claims_name_the_file_and_key(tmp_path, claims, words):
    (tmp_path / "mine.yaml").write_text(
        f"title: t\nfactors: {{depth: [56, 92]}}\nreference: {{depth: 56}}\nclaims: {claims}\n"
    )
    with pytest.raises(SpecError) as err:
        load_study("mine", root=tmp_path)
    for word in ["mine.yaml", *words]:
        assert word in str(err.value)


def test_excluded_variants_are_not_run_and_exclusions_are_checked(tmp_path):
    study = load_study("ARL_vs_NAL")
    names = [study.variant_name(v) for v in study.variants()]
    assert "none-164" in names and "none-56" not in names and len(names) == 9
    (tmp_path / "bad.yaml").write_text(
        "title: t\nfactors: {depth: [56, 92]}\nreference: {depth: 56}\nexclude: [{depth: 57}]\n"
    )
    with pytest.raises(SpecError, match=r"exclude\[0\]\.depth"):
        load_study("bad", root=tmp_path)


def _cut_down(seeds: int = 2):
    """A quick configuration cut down from the command line and interrupted: one run of it missing."""
    specs = _runs("trainer.max_epochs=1", "data.train_size=2000", profile="quick", seeds=seeds)
    errors = {"hourglass": 60.0, "local_conv_matched": 62.0, "local_conv": 63.0}
    return [_result(s, test_error=errors[s.variant] + s.seed) for s in specs][:-1]


def test_the_ledger_never_prefers_a_cut_down_or_incomplete_configuration(tmp_path):
    """Issue #20 defect 10: an interrupted study with --set cuts became Table 4's evidence."""
    study, reports = load_study("mask_structure"), tmp_path / "reports"
    build_report(study, _mask_structure_results("quick", 2), reports / "mask_structure" / "quick")
    cut = _cut_down(seeds=3)  # more seeds than the complete one: still not preferred
    build_report(study, cut, reports / "mask_structure" / cut[0].configuration)
    md, csv = write_ledger(reports)
    row = pd.read_csv(csv).query("study == 'mask_structure'").iloc[0]
    assert row["configuration"] == "quick"


def test_a_cut_down_configuration_alone_is_shown_with_its_cuts_and_runs(tmp_path):
    study, reports = load_study("mask_structure"), tmp_path / "reports"
    cut = _cut_down()
    build_report(study, cut, reports / "mask_structure" / cut[0].configuration)
    md, _ = write_ledger(reports)
    line = next(line for line in md.read_text().splitlines() if line.startswith("| The hourglass mask"))
    assert cut[0].configuration in line and "5 of 6 runs" in line
    assert "trainer.max_epochs=1" in line and "data.train_size=2000" in line


def test_a_rebuilt_report_leaves_no_stale_files(tmp_path):
    """Issue #20 defect 4: files of another table (delta.png, claims.csv) stayed beside a rebuilt report."""
    folder = tmp_path / "reports" / "mask_structure" / "quick"
    folder.mkdir(parents=True)
    (folder / "delta.png").write_bytes(b"of another table")
    (folder / "claims.csv").write_text("claim\nold\n")
    written = build_report(load_study("mask_structure"), _mask_structure_results("quick", 2), folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in written)
    assert "delta.png" not in {p.name for p in written} and (folder / "claims.csv").read_text() != "claim\nold\n"


def test_the_ledger_ranks_configurations_by_what_they_ran(tmp_path):
    """A complete shortened (gpu) configuration beats a complete pilot (quick) one with more seeds."""
    study, reports = load_study("mask_structure"), tmp_path / "reports"
    build_report(study, _mask_structure_results("quick", 5), reports / "mask_structure" / "quick")
    gpu = [r.model_copy(update={"epochs": [{"epoch": 40, "step": 32_000}]}) for r in _mask_structure_results("gpu", 3)]
    build_report(study, gpu, reports / "mask_structure" / gpu[0].configuration)
    _, csv = write_ledger(reports)
    row = pd.read_csv(csv).query("study == 'mask_structure'").iloc[0]
    assert row["configuration"] == gpu[0].configuration and row["tier"] == "shortened"
    assert "32,000 of 160,000 steps" in row["reductions"] and "bf16-mixed (paper 32-true)" in row["reductions"]


def test_a_report_of_an_earlier_version_is_reworded_as_a_pilot(tmp_path):
    """Reports written before the regimes (no tier column) stay readable, and never say reproduced."""
    folder = tmp_path / "reports" / "attention_type" / "quick"
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "claim": ["Mixed attention beats channel and spatial attention"] * 2,
            "study": ["attention_type"] * 2,
            "paper_table": ["Table 1"] * 2,
            "kind": ["each"] * 2,
            "evidence": ["channel − mixed (test error, pp)", "spatial − mixed (test error, pp)"],
            "value": [3.2, 0.5],
            "ci95_low": [1.5, -1.0],
            "ci95_high": [6.0, 2.0],
            "paper": [0.72, 0.81],
            "seeds": [3, 3],
            "diverged": [0, 0],
            "p": [0.1, 0.5],
            "detectable": [3.7, 3.0],
            "seeds_for_paper": [76.0, 40.0],
            "verdict": ["reproduced", "inconclusive"],
            "claim_verdict": ["inconclusive"] * 2,
            "profile": ["quick"] * 2,
            "configuration": ["quick"] * 2,
            "precision": ["32-true"] * 2,
            "synthetic": [False] * 2,
            "note": [""] * 2,
        }
    ).to_csv(folder / "claims.csv", index=False)
    md, csv = write_ledger(tmp_path / "reports")
    row = pd.read_csv(csv).query("study == 'attention_type'").iloc[0]
    assert row["tier"] == "pilot" and row["outcome"] == "direction only" and row["ratio"] == pytest.approx(3.2 / 0.72)
    line = next(x for x in md.read_text().splitlines() if x.startswith("| Mixed attention"))
    assert "judged by an earlier version" in line and "**pilot: unclear**" in line and "reproduced" not in line


def test_the_readme_results_table_is_the_ledgers():
    """Issue #17 item 10: README's results are drawn from reports/CLAIMS.csv, never retyped."""
    from pathlib import Path

    from resattn.report.ledger import README_BLOCK, results_table

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    begin, end = README_BLOCK
    block = text[text.index(begin) + len(begin) : text.index(end)].strip()
    assert block == results_table(pd.read_csv(root / "reports" / "CLAIMS.csv")), (
        "README's results block is out of date: run python studies/report.py --claims"
    )


def test_the_readme_block_follows_the_ledger(tmp_path):
    from resattn.report.ledger import README_BLOCK

    (tmp_path / "README.md").write_text(f"# x\n\n{README_BLOCK[0]}\nold\n{README_BLOCK[1]}\n\nrest\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")  # a checkout: its README follows
    reports = tmp_path / "reports"
    build_report(load_study("mask_structure"), _mask_structure_results("quick", 3), reports / "mask_structure" / "q")
    write_ledger(reports)
    text = (tmp_path / "README.md").read_text()
    assert (
        "old" not in text and "| The hourglass mask beats local convolutions at equal FLOPs | mask_structure |" in text
    )
    assert text.endswith("\n\nrest\n") and text.startswith("# x\n\n")


def test_only_a_paper_protocol_configuration_reads_reproduced_in_the_ledger(tmp_path):
    from tests.test_stats import _mask_results

    study, reports = load_study("mask_structure"), tmp_path / "reports"
    local = [h + d for h, d in zip(HOUR, [0.9, 1.1, 0.8, 1.2, 0.95])]
    build_report(study, _mask_results(local, HOUR), reports / "mask_structure" / "paper")
    md, _ = write_ledger(reports)
    line = next(x for x in md.read_text().splitlines() if x.startswith("| The hourglass mask beats local"))
    assert "**paper protocol** (none); 50,000 train / 10,000 test images; 5 seeds" in line
    assert line.endswith("| **reproduced** |") and "the paper's value needs" in line and "detectable ≥" in line


@pytest.mark.parametrize(
    "claims, key, words",
    [
        ("[{claim: x, each: [hourglass-56]}]", "claims[0].each", "hourglass-56 is compared with itself"),
        ("[{claim: x, each: [local-92], against: {depth: 92}}]", "claims[0].against", "compared with itself"),
        ("[{claim: x, trend: {factor: depth, of: [hourglass-56, local-92]}}]", "claims[0].trend.of", "alike otherwise"),
        ("[{claim: x, trend: {factor: depth, of: [local-56]}}]", "claims[0].trend.of", "two or more levels"),
        ("[{claim: x, trend: {factor: depth, of: [hourglass-56, hourglass-92]}}]", "claims[0].trend.of", "absolute"),
        ("[{claim: x, response: {collapses: [local-56], below: -1}}]", "claims[0].response.below", "> 0"),
    ],
)
def test_claims_with_empty_comparisons_are_refused_when_read(tmp_path, claims, key, words):
    """A new user's trial: a variant compared with itself got a confident verdict; a trend over the
    reference variants divided by zero; a negative threshold failed at report time."""
    (tmp_path / "mine.yaml").write_text(
        "title: t\nfactors: {mask_structure: [hourglass, local], depth: [56, 92]}\n"
        "reference: {mask_structure: hourglass}\n"
        f"claims: {claims}\n"
    )
    with pytest.raises(SpecError) as err:
        load_study("mine", root=tmp_path)
    assert key in str(err.value) and words in str(err.value) and "mine.yaml" in str(err.value)


def test_the_readme_beside_a_reports_folder_is_left_alone_unless_it_is_the_checkouts(tmp_path, capsys):
    from resattn.report.ledger import README_BLOCK

    block = f"{README_BLOCK[0]}\nold\n{README_BLOCK[1]}\n"
    (tmp_path / "README.md").write_text(block)
    write_ledger(tmp_path / "elsewhere" / "reports")  # a reports folder of one's own, beside no checkout
    write_ledger(tmp_path / "mine")  # beside the README, but not named reports/
    assert (tmp_path / "README.md").read_text() == block
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    write_ledger(tmp_path / "reports")
    assert (
        "old" not in (tmp_path / "README.md").read_text() and "README results block updated" in capsys.readouterr().out
    )


def test_a_claim_with_pieces_without_runs_is_judged_on_those_run_and_says_so(tmp_path):
    """cifar_benchmarks trained on CIFAR-10 only (``--variants 'cifar10-*'``): its claims rest on
    the CIFAR-10 pieces, and the ledger names the pieces that have no runs instead of "not run"."""
    study = load_study("cifar_benchmarks")
    specs = {(r.variant, r.seed): r for r in _runs(profile="quick", study="cifar_benchmarks", seeds=3)}
    errors = {"cifar10-ResNet-164": (60.0, 0), "cifar10-Attention-92": (55.0, 1), "cifar10-Attention-236": (50.0, 2)}
    results = [_result(specs[v, s], test_error=e + k * DIFFS[s]) for v, (e, k) in errors.items() for s in range(3)]
    reports = tmp_path / "reports"
    build_report(study, results, reports / "cifar_benchmarks" / "quick")
    md, csv = write_ledger(reports)
    ledger = pd.read_csv(csv)
    rows = ledger[ledger["study"] == "cifar_benchmarks"]
    assert set(rows.groupby("claim")["claim_outcome"].first()) == {"direction only"}  # the CIFAR-10 pieces hold
    assert (rows["outcome"] == "not run").sum() == 3  # 2 + 1 CIFAR-100 pieces
    text = md.read_text()
    line = next(x for x in text.splitlines() if x.startswith("| Attention-92 and Attention-236 beat ResNet-164"))
    assert "**pilot: consistent with the paper's direction" in line and "on 2 of 4 pieces (no runs for " in line
    assert "cifar100-Attention-92 − cifar100-ResNet-164 (test error, pp): no runs in this configuration" in line
    assert "not run" not in line
