"""``python -m pytest_servebench.testing`` runs the mock server (same options)."""

import sys

from pytest_servebench.testing.mockserver import main

sys.exit(main())
