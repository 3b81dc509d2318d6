"""The public API (docs/api.md): the names `gpaco` exports, the example that trains a timm model
with GPaCo in a plain loop, and the console commands of pyproject.toml."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gpaco
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
API_MD = ROOT / "docs" / "api.md"


def python_blocks(path: Path):
    from test_docs import code_blocks

    return code_blocks(path, langs=("python",))


def test_every_exported_name_resolves():
    for name in gpaco.__all__:
        assert getattr(gpaco, name) is not None, name
    from gpaco.losses.criteria import PaCoLoss
    from gpaco.models.contrastive import GPaCoModel

    assert gpaco.GPaCoModel is GPaCoModel and gpaco.PaCoLoss is PaCoLoss
    with pytest.raises(AttributeError, match="no attribute 'GPaCoLos'"):
        gpaco.GPaCoLos


def test_import_gpaco_is_cheap():
    code = "import sys, gpaco; print(sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         cwd=str(ROOT), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_exports_table_matches_all():
    text = API_MD.read_text()
    table = text.split("## What `gpaco` exports")[1].split("##")[0]
    documented = set(re.findall(r"`(\w+)`", table)) - {"gpaco"}
    assert documented == set(gpaco.__all__) - {"__version__"}


def test_api_example_trains_a_timm_model_with_gpaco(capsys):
    block = python_blocks(API_MD)[0]
    assert "timm.create_model" in block and "GPaCoModel" in block and 20 <= len(block.splitlines()) <= 45
    exec(compile(block, str(API_MD), "exec"), {"__name__": "api_example"})
    out = capsys.readouterr().out
    losses = [float(line.split("loss ")[1]) for line in out.splitlines() if line.startswith("epoch")]
    assert len(losses) == 2 and all(v == v and v > 0 for v in losses)
    assert "top-1 " in out and "worst class " in out


SCRIPTS = {"gpaco-train": "tools/train.py", "gpaco-eval": "tools/eval.py", "gpaco-check-data": "tools/check_data.py",
           "gpaco-eval-adv": "tools/eval_adversarial.py", "gpaco-predict": "tools/predict.py",
           "gpaco-study": "tools/study.py", "gpaco-make-lists": "tools/make_lists.py"}


def _entry_points():
    """[project.scripts] of pyproject.toml (read by hand: tomllib needs Python 3.11)."""
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, flags=re.M))


def test_entry_points_are_declared():
    assert set(_entry_points()) == set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_entry_point_runs_the_tool(name, capsys):
    module, _, func = _entry_points()[name].partition(":")
    entry = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as exit_:
        entry(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    # the script runs the same function
    assert f"from {module} import {func}" in (ROOT / SCRIPTS[name]).read_text()
