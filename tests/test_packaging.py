"""Top-level landmarks stay true: requirements.txt, LICENSE and data/README.md.

* requirements.txt lists exactly the ``[project] dependencies`` of pyproject.toml.
* LICENSE is the Apache License 2.0, the licence pyproject.toml declares.
* Every split list or class-count file a recipe under sh/ passes is named in data/README.md.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Dict, Optional, Set

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


# ----------------------------------------------------------------------------- requirements.txt


def _normalised(lines) -> Dict[str, str]:
    """``{canonical name: 'extras|specifiers|marker'}``: spacing and specifier order do not matter."""
    out = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} is listed twice"
        out[name] = f"{sorted(req.extras)}|{req.specifier}|{req.marker or ''}"
    return out


def test_requirements_txt_mirrors_the_pyproject_dependencies():
    text = (ROOT / "requirements.txt").read_text()
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    listed = _normalised(ln for ln in lines if ln)
    declared = _normalised(_pyproject()["project"]["dependencies"])
    assert listed == declared, (
        f"requirements.txt and pyproject.toml [project] dependencies disagree: only in requirements.txt "
        f"{sorted(set(listed.items()) - set(declared.items()))}, only in pyproject.toml "
        f"{sorted(set(declared.items()) - set(listed.items()))}")


def test_torch_floor_is_what_the_code_needs():
    """The optimizers pass ``fused=`` to SGD (CPU support since torch 2.4) and build
    ``torch.amp.GradScaler(device)`` (2.3): a floor below 2.4 would install a torch the code
    cannot run on. torchvision 0.19 is 2.4's."""
    from packaging.version import Version

    floors = {}
    for line in _pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        floors[req.name] = min((Version(s.version) for s in req.specifier if s.operator == ">="), default=None)
    assert floors["torch"] >= Version("2.4") and floors["torchvision"] >= Version("0.19"), floors


# ----------------------------------------------------------------------------- LICENSE

# sha256 of the whitespace-normalised text from "Apache License" to "END OF TERMS AND CONDITIONS"
# of the canonical licence (apache.org/licenses/LICENSE-2.0.txt; Debian's
# /usr/share/common-licenses/Apache-2.0 is the same text).
APACHE_2_TERMS_SHA256 = "59d8f0ba87ad9a2f1a431123c8d16646e5b89ba53653e818f16d136d77263c99"
APACHE_2_SECTIONS = ("Definitions", "Grant of Copyright License", "Grant of Patent License", "Redistribution",
                     "Submission of Contributions", "Trademarks", "Disclaimer of Warranty",
                     "Limitation of Liability", "Accepting Warranty or Additional Liability")


def test_license_is_the_apache_2_text_that_pyproject_declares():
    assert _pyproject()["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    head = text.split()[:5]
    assert head == ["Apache", "License", "Version", "2.0,", "January"], f"LICENSE starts with {' '.join(head)!r}"
    sections = tuple(m.group(2) for m in re.finditer(r"^\s+(\d)\. ([A-Z][^.\n]*)\.", text, re.M))
    assert sections == APACHE_2_SECTIONS, f"LICENSE sections: {sections}"
    end = "END OF TERMS AND CONDITIONS"
    terms = text[text.index("Apache License"):text.index(end) + len(end)]
    digest = hashlib.sha256(" ".join(terms.split()).encode()).hexdigest()
    assert digest == APACHE_2_TERMS_SHA256, "LICENSE terms differ from the Apache License 2.0 text"


# ----------------------------------------------------------------------------- data/README.md

FILE_FLAG = re.compile(r"--(?:train-list|val-list|test-list|class-counts)[ =]+(\"[^\"]*\"|'[^']*'|[^\s)]+)")
# `VAR="${VAR:-default}"` / `VAR="${VAR-default}"` / `VAR=value`, at the start of a line
ASSIGNMENT = re.compile(r"^\s*(\w+)=(?:\"\$\{\1:?-([^}]*)\}\"|\"([^\"$]*)\"|([^\s\"$(]+))\s*$", re.M)
VAR_REF = re.compile(r"^\$\{?(\w+)\}?$")
# the file a recipe's header tells tools/class_counts_seg.py to write
COUNTS_OUT = re.compile(r"class_counts_seg\.py[^\n]*?--out\s+(\S+)")


def _defaults(script: str) -> Dict[str, str]:
    out = {}
    for m in ASSIGNMENT.finditer(script):
        out.setdefault(m.group(1), next((g for g in m.groups()[1:] if g is not None), ""))
    return out


def _resolve(value: str, defaults: Dict[str, str]) -> Optional[str]:
    """A flag's value with whole-variable references replaced by their defaults; None if empty."""
    value = value.strip("\"'")
    for _ in range(5):
        m = VAR_REF.match(value)
        if not m or m.group(1) not in defaults:
            break  # a path, or a variable the script does not set (left as is: the guard test flags it)
        value = defaults[m.group(1)]
    return value or None


def recipe_data_files() -> Dict[str, Set[str]]:
    """``{file name: {recipes}}`` of every list / class-count file the scripts under sh/ pass."""
    found: Dict[str, Set[str]] = {}
    for path in sorted((ROOT / "sh").rglob("*.sh")):
        text = path.read_text()
        code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        defaults = _defaults(code)
        values = [_resolve(m.group(1), defaults) for m in FILE_FLAG.finditer(code)]
        values += [m.group(1) for m in COUNTS_OUT.finditer(text)]
        for value in filter(None, values):
            name = value.rstrip("/").rsplit("/", 1)[-1]
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_recipe_file_resolution_finds_the_standard_lists():
    # guards the parser: a regex that silently finds nothing would make the next test vacuous
    found = recipe_data_files()
    for name in ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt", "iNaturalist18_val.txt", "Places_LT_test.txt",
                 "val.txt", "ade20k_image_label_stats.txt"):
        assert name in found, f"{name} not found among {sorted(found)}"
    assert not [n for n in found if "$" in n], f"unresolved variables in {sorted(found)}"


def test_every_list_and_class_count_file_of_a_recipe_is_named_in_data_readme():
    readme = (ROOT / "data" / "README.md").read_text()
    missing = {name: sorted(recipes) for name, recipes in recipe_data_files().items() if name not in readme}
    assert not missing, f"data/README.md does not say where these files come from: {missing}"
