"""The version of the package, the wheel and the native library: the one
place it is written. pyproject.toml reads it (setuptools' dynamic version),
the Makefile passes it to the Go link (ms_version()), the CLI prints it."""

__version__ = "0.1.0"
