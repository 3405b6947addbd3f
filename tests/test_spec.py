"""Study specs and profiles: validated YAML, package data, studies of one's own, no torch (issue #10)."""

import subprocess
import sys

import pytest

from resattn.study.spec import (
    SpecError,
    available_studies,
    expand,
    load_profile,
    load_study,
    parse_overrides,
)


def test_every_paper_table_has_a_study():
    assert set(available_studies()) >= {
        "ARL_vs_NAL",
        "attention_type",
        "mask_structure",
        "noisy_labels",
        "cifar_benchmarks",
    }
    study = load_study("ARL_vs_NAL")
    assert len(study.variants()) == 9 and study.paper[("nal", "164")] == 7.18  # 8 + ResNet-164 (Fig. 4)
    assert study.reference_of(("nal", "128")) == ("arl", "128")


def _write(tmp_path, text, name="broken"):
    (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "text, words",
    [
        ("title: t\nfactors: {depth: [56}\n", ["broken.yaml", "line 2"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {depth: 56}\ncolour: red\n", ["broken.yaml", "'colour'"]),
        ("title: t\nfactors: {depth: [56]}\n", ["broken.yaml", "'reference'"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {width: 1}\n", ["reference.width", "depth"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {depth: 92}\n", ["reference.depth", "56"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {depth: 56}\npaper: {92: 5.0}\n", ["paper.92", "56"]),
        ("title: t\nfactors: {depth: [56]}\nreference: {depth: 56}\npaper: {56: high}\n", ["paper.56", "a number"]),
        ("title: t\nfactors: {net: {a: {width: 1}}}\nreference: {net: a}\n", ["factors.net.a.width", "model.<arg>"]),
    ],
)
def test_malformed_study_names_file_key_and_expectation(tmp_path, text, words):
    with pytest.raises(ValueError) as err:
        load_study("broken", root=_write(tmp_path, text))
    for word in words:
        assert word in str(err.value)


def test_unknown_study_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*ARL_vs_NAL"):
        load_study("ARL_vs_NLA")
    with pytest.raises(ValueError, match="unknown study 'profiles'"):
        load_study("profiles")


def test_a_study_may_be_a_yaml_file_of_ones_own(tmp_path):
    path = _write(tmp_path, "title: mine\nfactors: {depth: [56, 92]}\nreference: {depth: 56}\n", "my_depths")
    study = load_study(str(path / "my_depths.yaml"))
    assert study.name == "my_depths" and [study.variant_name(v) for v in study.variants()] == ["56", "92"]
    with pytest.raises(ValueError, match="does not exist"):
        load_study(str(path / "missing.yaml"))


def test_run_ids_are_stable_and_follow_the_config():
    study, quick = load_study("noisy_labels"), load_profile("quick")
    a, b = expand(study, quick, 2), expand(study, quick, 2)
    assert [r.run_id for r in a] == [r.run_id for r in b] and len({r.run_id for r in a}) == 16
    run = next(r for r in a if r.variant == "ResNet-164-0.5" and r.seed == 1)
    assert run.config["model"]["depth"] == 164 and run.config["model"]["attention_learning"] == "none"
    assert run.config["data"]["label_noise"] == 0.5 and run.config["data"]["noise_seed"] == run.seed
    assert run.config["seed_everything"] == run.seed


def test_smoke_profile_swaps_in_synthetic_data_with_the_class_count():
    runs = expand(load_study("cifar_benchmarks"), load_profile("smoke"))
    data = {r.levels["dataset"]: r.config["data"] for r in runs}
    assert data["cifar100"]["dataset"] == "synthetic" and data["cifar100"]["synthetic_classes"] == 100
    assert "synthetic (paper: CIFAR)" in runs[0].reductions["data.dataset"]


def test_where_the_data_lies_is_no_reduction():
    runs = expand(
        load_study("mask_structure"),
        load_profile("smoke"),
        None,
        parse_overrides(["data.data_dir=/x", "model.width=0.25"]),
    )
    assert "data.data_dir" not in runs[0].reductions and runs[0].reductions["model.width"] == "0.25 (command line)"


def test_overrides_are_validated():
    assert parse_overrides(["trainer.max_epochs=3", "data.synthetic_size=[8, 4]"]) == {
        "trainer.max_epochs": 3,
        "data.synthetic_size": [8, 4],
    }
    with pytest.raises(SpecError, match="model.<arg>"):
        parse_overrides(["width=3"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["model.width"])


def test_loading_specs_and_the_package_root_import_no_torch():
    code = (
        "import sys, resattn; from resattn.study.spec import load_study, expand, load_profile; "
        "from resattn.study import store, runner, executors, wandb_runs; import resattn.cli.study, resattn.cli.report; "
        "expand(load_study('ARL_vs_NAL'), load_profile('quick')); "
        "print(sorted(m for m in ('torch', 'lightning', 'wandb', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
