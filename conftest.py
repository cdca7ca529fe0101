# The repository's own pytest configuration lives in pyproject.toml and tests/conftest.py.
# This file marks the repo root as the rootdir for `pytest` runs started here.
