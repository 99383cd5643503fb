"""Fixtures shared by every test directory (tests/, libs/, services/*/tests)."""

pytest_plugins = ["tests.support.fixtures", "tests.support.identity"]
