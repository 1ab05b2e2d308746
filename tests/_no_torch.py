"""Runs Python code in a child process where torch (and numpy) cannot be
imported, as in the loader image's lean install (`pip install --no-deps`
plus cffi). A meta-path finder refuses the import; the child fails if any
of them got into sys.modules anyway."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Dict, Optional

BLOCKED = ("torch", "numpy")

_PRELUDE = textwrap.dedent(f"""
    import sys
    BLOCKED = {BLOCKED!r}

    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked: this process has no torch")
            return None

    sys.meta_path.insert(0, _Blocker())
""")

_EPILOGUE = textwrap.dedent("""
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, f"imported without need: {leaked}"
""")


def run(code: str, env: Optional[Dict[str, str]] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs code (after the blocker, before the leak check); returns the
    completed process (check=False: callers assert on it)."""
    source = _PRELUDE + textwrap.dedent(code) + _EPILOGUE
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", source], env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def check(code: str, env: Optional[Dict[str, str]] = None) -> str:
    p = run(code, env)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p.stdout
