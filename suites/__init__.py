"""The built-in model and dataset configs (models/, datasets/), the single source of truth.

Packaged into the wheel from here as ``pytest_servebench.builtin_suites`` (pyproject.toml's
package-dir); this file only makes that package importable. The rootdir's suites/ folder is
also where a project keeps its own configs and gates (demo_gate.yaml is this repo's)."""
