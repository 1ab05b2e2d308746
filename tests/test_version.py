"""One version (issue 12): python/runai_model_streamer/_version.py is the only
place it is written; the package metadata (pyproject's dynamic version), the
library (linked in by the Makefile) and the CLI all report it."""

import importlib.metadata
import re
from pathlib import Path

import runai_model_streamer
from runai_model_streamer import _native
from runai_model_streamer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_everywhere(capsys):
    version = runai_model_streamer.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version)
    assert importlib.metadata.version("model-streamer") == version
    assert _native.version() == version
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"model-streamer {version} (library {version},")


def test_written_once():
    """No other file sets it (an assignment or a return of the literal; the
    header's comment may show it as an example)."""
    version = re.escape(runai_model_streamer.__version__)
    setting = re.compile(rf'(version\w*\s*[:=]\s*|return\s+)"{version}"')
    holders = [p.relative_to(ROOT).as_posix() for p in
               [ROOT / "pyproject.toml", ROOT / "Makefile", *(ROOT / "go").rglob("*.[cgh]*"),
                *(ROOT / "python").rglob("*.py")]
               if p.is_file() and setting.search(p.read_text(errors="replace"))]
    assert holders == ["python/runai_model_streamer/_version.py"]
