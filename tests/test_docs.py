"""The README and the docs/ pages (issue #18 item 6): a short README whose links resolve, a table of
computed figures that equals what the command computes, and an architecture picture that follows the
imports. Fast: the summary runs on the meta device (shapes only, no arithmetic)."""

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from resattn.config import PAPER_RESNET_PARAMS, PRESETS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 12_000  # characters
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings inside code blocks
    return {_anchor(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` to a missing file or to a heading its target lacks."""
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_file():
            broken.append(target)
        elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
            broken.append(target)
    return broken


def test_the_readme_is_short_and_links_every_docs_page():
    text = README.read_text()
    assert len(text) <= README_LIMIT, f"README.md is {len(text)} characters; at most {README_LIMIT}: move text to docs/"
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", text))
    assert linked, "the README links no docs/ page"
    assert not [p for p in linked if not (ROOT / p).is_file()], "the README links a docs page that does not exist"
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert _broken_links(page) == []


# The table of docs/model.md, row label -> the summary command's flags.
def _summary_flags(label: str) -> list[str]:
    m = re.fullmatch(r"(Attention|ResNet)-(\d+) \((CIFAR|ImageNet)(?:, `none`)?\)", label)
    assert m, f"docs/model.md: a row the test cannot map to a configuration: {label!r}"
    kind, depth, family = m.groups()
    flags = ["--depth", depth]
    if kind == "ResNet":
        flags += ["--attention_learning", "none"]
    if family == "ImageNet":
        flags += ["--family", "imagenet", "--num_classes", "1000"]
    return flags


def _cost_table() -> dict[str, list[str]]:
    """The params / GMACs table of docs/model.md: label -> its cells."""
    rows = {}
    lines = (DOCS / "model.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| network | params (this build) |"))
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _summary(capsys, flags: list[str]) -> dict:
    """``python -m resattn summary FLAGS``, in this process: the command's own JSON."""
    from resattn.__main__ import main

    assert main(["summary", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_model_pages_cost_table_is_what_summary_computes(capsys):
    """docs/model.md's params / GMACs table is never retyped: every row equals `python -m resattn
    summary`, and every preset (and the ResNet-164 baseline) has a row."""
    table = _cost_table()
    covered = set()
    for label, (params, paper, gmacs) in table.items():
        flags = _summary_flags(label)
        with torch.device("meta"):  # counts depend on shapes only
            result = _summary(capsys, flags)
        assert params == f"{result['params'] / 1e6:.2f}M", label
        assert gmacs == f"{result['macs'] / 1e9:.3f}", label
        expected = "—" if result["paper_params_millions"] is None else f"{result['paper_params_millions']}M"
        assert paper.split(" (")[0] == expected, label
        covered.add((result["config"]["family"], result["config"]["depth"], result["config"]["attention_learning"]))
    wanted = {(f, d, "arl") for f, d in PRESETS} | {(f, d, "none") for f, d in PAPER_RESNET_PARAMS}
    assert wanted <= covered, f"networks without a row in docs/model.md: {sorted(wanted - covered)}"


def test_the_summary_on_the_meta_device_counts_as_on_the_cpu(capsys):
    flags = ["--depth", "164", "--attention_learning", "none"]
    on_cpu = _summary(capsys, flags)
    with torch.device("meta"):
        on_meta = _summary(capsys, flags)
    assert on_meta == on_cpu


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module of resattn/ and studies/: the resattn modules it imports, at the top or in a
    function (``from resattn.study import store`` names resattn.study.store)."""
    files = {_module_name(p): p for p in [*ROOT.glob("resattn/**/*.py"), *ROOT.glob("studies/*.py")]}
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "resattn":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in files else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "resattn"}
        graph[name] = found - {name}
    return graph


def _has_code(module: str) -> bool:
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def test_the_architecture_picture_follows_the_imports():
    """docs/architecture.md draws the modules in rows: each imports only from the rows below its own."""
    text = (DOCS / "architecture.md").read_text()
    picture = re.search(r"^## The layers\n.*?```\n(.*?)```", text, flags=re.S | re.M).group(1)
    row = {}
    for i, line in enumerate(picture.splitlines()):
        for token in re.findall(r"[\w/]+\.py", line):
            name = token[:-3].replace("/", ".")
            name = name if name.startswith("studies.") else "resattn" if name == "__init__" else f"resattn.{name}"
            name = name.removesuffix(".__init__")
            assert name not in row, f"{token} is drawn twice"
            row[name] = i
    graph = _imports()
    missing = sorted(m for m in graph if m not in row and _has_code(m))
    assert not missing, f"modules not in the picture of docs/architecture.md: {missing}"
    upward = sorted(
        f"{a} imports {b}"
        for a, imported in graph.items()
        if a in row
        for b in imported
        if b in row and row[b] <= row[a]
    )
    assert not upward, f"docs/architecture.md draws these imports upward or sideways: {upward}"
