"""Reuses the what-if tests' history helpers (the session's chDB, own cluster names rc-*)."""

from tests.policy_engine.whatif.conftest import flows  # noqa: F401  (the package's flow store fixture)
