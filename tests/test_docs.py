"""The documentation stays true: docs/*.md and README.md against the scripts and the tools.

* docs/recipes.md: every script its tables name exists, every recipe under sh/ is named in a
  table, and each row's Paper number appears in the header comment of one of its scripts.
* Every sh/*.sh and tools/*.py path named anywhere in the docs exists; every flag of every
  `python tools/X.py ...` command (and of EXTRA_ARGS given to a recipe) in a code block is an
  option of that tool; every relative link resolves.
* docs/migrating.md: every flag in its "gpaco" column exists; docs/model_zoo.md: each row's
  --method/--arch are what its eval recipe passes (or what the row overrides).
* README.md: starts with the two commands, links the four docs, has the demo results section.
* docs/data.md: the ImageNet list snippet runs and writes lists that tools/check_data.py accepts.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))
RECIPES_MD = DOCS / "recipes.md"

# Scripts under sh/ that are not recipes (no paper row).
INFRA = {"launch.sh", "slurm.sh", "setup_env.sh", "test.sh", "demo.sh", "demo_seg.sh", "study.sh"}

README_TOP = [
    "# gpaco",
    "",
    "```bash",
    "bash sh/demo.sh   # set up .venv, build MNIST-LT from embedded digits, train CE / balanced CE / GPaCo on CPU, "
    "print the table",
    "bash sh/test.sh   # set up .venv and run the test suite",
]

SH_PATH = re.compile(r"(?<![\w/.-])sh/[\w./-]+?\.sh\b")
TOOL_PATH = re.compile(r"(?<![\w/.-])tools/[\w-]+\.py\b")
NUMBER = re.compile(r"\d+\.\d+")


# ----------------------------------------------------------------------------- markdown helpers

def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(path: Path) -> List[Tuple[List[str], List[List[str]]]]:
    """Every pipe table of a markdown file outside code blocks: (header, rows)."""
    out, fenced = [], False
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if (not fenced and line.startswith("|") and i + 1 < len(lines)
                and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1])):
            header, rows = _cells(line), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append((header, rows))
            continue
        i += 1
    return out


def code_blocks(path: Path, langs=("bash", "sh", "")) -> List[str]:
    """Contents of fenced code blocks in the given languages."""
    blocks, current, lang = [], None, None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            if current is None:
                lang, current = stripped[3:].strip(), []
            else:
                if lang in langs:
                    blocks.append("\n".join(current))
                current = None
            continue
        if current is not None:
            current.append(line)
    return blocks


def commands(block: str) -> List[str]:
    """Shell commands of a code block: continuation lines joined, comments and prompts dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        out.append(line)
    return out


def split_command(cmd: str) -> List[str]:
    return shlex.split(cmd, comments=True)


def recipes_under_sh() -> List[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "sh").rglob("*.sh") if p.name not in INFRA)


def recipe_table_rows() -> List[Tuple[Dict[str, str], List[str]]]:
    """(row as {column: cell}, scripts named in the row) for every table row of recipes.md."""
    rows = []
    for header, body in tables(RECIPES_MD):
        for cells in body:
            assert len(cells) == len(header), f"recipes.md: row has {len(cells)} cells, header {len(header)}: {cells}"
            row = dict(zip(header, cells))
            rows.append((row, SH_PATH.findall(" ".join(cells))))
    return rows


def header_comment(script: Path) -> str:
    """The leading comment block of a shell script."""
    lines = []
    for line in script.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- recipes.md

NAMED_IN_RECIPES = sorted({s for _, scripts in recipe_table_rows() for s in scripts})


def test_recipes_table_is_populated():
    rows = recipe_table_rows()
    assert len(rows) >= 50
    methods = {row.get("Method") for row, _ in rows}
    assert {"GPaCo", "PaCo", "CE", "multi-task"} <= methods


@pytest.mark.parametrize("script", NAMED_IN_RECIPES)
def test_recipes_table_script_exists(script):
    assert (ROOT / script).is_file(), f"docs/recipes.md names {script}, which does not exist"


@pytest.mark.parametrize("recipe", recipes_under_sh())
def test_every_recipe_is_in_the_table(recipe):
    assert recipe in NAMED_IN_RECIPES, f"{recipe} is not in any table of docs/recipes.md: add its row"


def _paper_rows():
    out = []
    for row, scripts in recipe_table_rows():
        numbers = NUMBER.findall(row.get("Paper", ""))
        if numbers and scripts:
            out.append(pytest.param(row, scripts, numbers, id=f"{row.get('Dataset')}|{row.get('Model')}|"
                                                              f"{row.get('Method')}"))
    return out


@pytest.mark.parametrize("row,scripts,numbers", _paper_rows())
def test_paper_number_matches_a_script_header(row, scripts, numbers):
    existing = [ROOT / s for s in scripts if (ROOT / s).is_file()]
    if not existing:
        pytest.skip("none of the row's scripts exists yet (test_recipes_table_script_exists fails for them)")
    headers = {s.relative_to(ROOT).as_posix(): header_comment(s) for s in existing}
    for number in numbers:
        assert any(re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", h) for h in headers.values()), (
            f"docs/recipes.md says {number} for this row but no header of {sorted(headers)} quotes it")


def test_ours_column_holds_numbers_only():
    """'Ours' is blank until measured; when filled it starts with a number (never a placeholder)."""
    for row, _ in recipe_table_rows():
        ours = row.get("Ours", "")
        assert ours == "" or re.match(r"^\d+(\.\d+)?", ours), f"Ours cell {ours!r} in {row}"


# ----------------------------------------------------------------------------- paths, links, commands

def _mentions(pattern: re.Pattern) -> List[Tuple[str, str]]:
    found = set()
    for doc in DOC_FILES:
        for m in pattern.findall(doc.read_text()):
            found.add((doc.relative_to(ROOT).as_posix(), m))
    return sorted(found)


@pytest.mark.parametrize("doc,path", _mentions(SH_PATH) + _mentions(TOOL_PATH))
def test_named_paths_exist(doc, path):
    assert (ROOT / path).is_file(), f"{doc} names {path}, which does not exist"


def _links() -> List[Tuple[str, str]]:
    out = []
    for doc in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if not re.match(r"^(https?:|mailto:|#)", target):
                out.append((doc.relative_to(ROOT).as_posix(), target))
    return sorted(set(out))


@pytest.mark.parametrize("doc,target", _links())
def test_relative_links_resolve(doc, target):
    assert ((ROOT / doc).parent / target.split("#")[0]).exists(), f"{doc} links to {target}, which does not exist"


def _load_check_data():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpaco_check_data_docs", ROOT / "tools" / "check_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# tools/<name>.py -> how to build its argparse parser in-process.
PARSERS = {
    "tools/train.py": lambda: importlib.import_module("gpaco.classification.args").build_train_parser(),
    "tools/eval.py": lambda: importlib.import_module("gpaco.classification.evaluate").build_eval_parser(),
    "tools/train_seg.py": lambda: importlib.import_module("gpaco.segmentation.train").build_train_parser(),
    "tools/eval_seg.py": lambda: importlib.import_module("gpaco.segmentation.evaluate").build_eval_parser(),
    "tools/check_data.py": lambda: _load_check_data().build_parser(),
}


@lru_cache(maxsize=None)
@functools.lru_cache(maxsize=None)  # one --help per tool and worker, not one per documented call
def tool_options(tool: str) -> Optional[frozenset]:
    """Option strings of a tool (None when the tool does not exist: test_named_paths_exist reports it)."""
    if not (ROOT / tool).is_file():
        return None
    if tool in PARSERS:
        parser: argparse.ArgumentParser = PARSERS[tool]()
        return frozenset(s for a in parser._actions for s in a.option_strings)
    proc = subprocess.run([sys.executable, str(ROOT / tool), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT))
    assert proc.returncode == 0, f"{tool} --help failed:\n{proc.stderr[-2000:]}"
    return frozenset(re.findall(r"(?<![\w-])--[\w][\w-]*", proc.stdout))


def recipe_entry(recipe: str) -> Optional[str]:
    m = re.search(r"launch\.sh\"?\s+(tools/[\w-]+\.py)", (ROOT / recipe).read_text())
    return m.group(1) if m else None


def _documented_calls() -> List[Tuple[str, str, List[str]]]:
    """(doc, tool, flags) for every tool invocation in a code block of the docs."""
    calls = []
    for doc in DOC_FILES:
        for block in code_blocks(doc):
            for cmd in commands(block):
                try:
                    argv = split_command(cmd)
                except ValueError:
                    continue
                rel = doc.relative_to(ROOT).as_posix()
                for i, tok in enumerate(argv):
                    if TOOL_PATH.fullmatch(tok):
                        own = argv[i + 1:argv.index("--")] if "--" in argv[i + 1:] else argv[i + 1:]  # after --: passed on
                        calls.append((rel, tok, [a.split("=")[0] for a in own if a.startswith("--")]))
                        break
                    if SH_PATH.fullmatch(tok) and (ROOT / tok).is_file():
                        extra = [a for a in argv[:i] if a.startswith("EXTRA_ARGS=")]
                        entry = recipe_entry(tok)
                        if extra and entry:
                            flags = [a.split("=")[0] for a in shlex.split(extra[0][len("EXTRA_ARGS="):])
                                     if a.startswith("--")]
                            calls.append((rel, entry, flags))
                        break
    return calls


def test_documented_commands_were_found():
    tools = {tool for _, tool, _ in _documented_calls()}
    assert {"tools/eval.py", "tools/check_data.py", "tools/convert_checkpoint.py"} <= tools


@pytest.mark.parametrize("doc,tool,flags", _documented_calls())
def test_documented_command_flags_exist(doc, tool, flags):
    options = tool_options(tool)
    if options is None:
        pytest.skip(f"{tool} does not exist yet (test_named_paths_exist fails for it)")
    unknown = [f for f in flags if f not in options]
    assert not unknown, f"{doc}: {tool} has no option {unknown}"


def _migrating_flags() -> List[str]:
    flags: Set[str] = set()
    for header, rows in tables(DOCS / "migrating.md"):
        if len(header) > 1 and header[1] == "gpaco":
            for cells in rows:
                for span in re.findall(r"`([^`]*)`", cells[1]):
                    flags.update(re.findall(r"(?<![\w-])--[\w][\w-]*", span))
    return sorted(flags)


def test_migrating_flags_found():
    assert {"--queue-size", "--batch-size", "--resume", "--aug", "--temperature"} <= set(_migrating_flags())


@pytest.mark.parametrize("flag", _migrating_flags())
def test_migrating_flag_exists(flag):
    known = set()
    for tool in ("tools/train.py", "tools/eval.py", "tools/train_seg.py", "tools/eval_seg.py"):
        known |= tool_options(tool) or set()
    assert flag in known, f"docs/migrating.md maps to {flag}, which no gpaco tool has"


def _zoo_rows():
    (header, rows), = [t for t in tables(DOCS / "model_zoo.md") if "`--arch`" in t[0]]
    return [dict(zip(header, r)) for r in rows]


@pytest.mark.parametrize("row", _zoo_rows(), ids=lambda r: r["Checkpoint (original README row)"])
def test_model_zoo_row_matches_its_eval_recipe(row):
    from gpaco.methods import method_names

    method = row["`--method`"].strip("`")
    arch = row["`--arch`"].strip("`")
    assert method in method_names("classification")
    recipe_cell = row["Eval recipe"]
    recipe = SH_PATH.findall(recipe_cell)[0]
    text = (ROOT / recipe).read_text()
    assert f"--method {method}" in text
    assert f"--arch {arch}" in text or f'--arch {arch}"' in recipe_cell or f"--arch {arch}" in recipe_cell


# ----------------------------------------------------------------------------- README

def test_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[:5] == README_TOP
    assert lines[5] == "```"


def test_readme_links_the_docs_and_has_the_demo_section():
    text = (ROOT / "README.md").read_text()
    for doc in ("docs/recipes.md", "docs/migrating.md", "docs/model_zoo.md", "docs/data.md"):
        assert f"]({doc})" in text, f"README.md does not link {doc}"
    assert "\n## Demo results\n" in text
    demo = text.split("\n## Demo results\n", 1)[1].split("\n## ", 1)[0]
    # The demo tables are study tables (issue 28): every cell a mean ± std over seeds.
    assert "| method | top-1 | many | medium | few |" in demo
    rows = {line.split("|")[1].strip(): line for line in demo.splitlines() if line.startswith("| ")}
    for method in ("ce", "balanced_ce", "gpaco", "reslt", "rescom", "mislas"):
        assert re.fullmatch(r"\| \w+( \| \d+\.\d\d ± \d+\.\d\d){6} \|.*", rows[method]), rows[method]
    assert re.fullmatch(r"\| mIoU( \| \d+\.\d\d ± \d+\.\d\d){3} \|", rows["mIoU"]), rows["mIoU"]


# ----------------------------------------------------------------------------- data.md snippet

def test_imagenet_list_snippet(tmp_path, capsys):
    text = (DOCS / "data.md").read_text()
    snippet = text.split("<!-- snippet: imagenet-lists", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    wnids = ["n02", "n01", "n10"]
    for split, per in (("train", 3), ("val", 2)):
        for w in wnids:
            d = tmp_path / split / w
            d.mkdir(parents=True)
            for j in range(per):
                (d / f"{w}_{j}.JPEG").write_bytes(b"")
    script = tmp_path / "make_lists.py"
    script.write_text(snippet)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    train = (tmp_path / "train.txt").read_text().splitlines()
    assert train[0] == "train/n01/n01_0.JPEG 0" and train[-1] == "train/n10/n10_2.JPEG 2" and len(train) == 9
    val = (tmp_path / "val.txt").read_text().splitlines()
    assert val[0] == "val/n01/n01_0.JPEG 0" and len(val) == 6
    check = _load_check_data()
    assert check.main(["--data-root", str(tmp_path), "--list", str(tmp_path / "train.txt"),
                       "--list", str(tmp_path / "val.txt"), "--num-classes", "3", "--strict"]) == 0
