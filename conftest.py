"""Fixtures shared by every test folder: real servers, started and stopped by the tests."""

pytest_plugins = ["cai_devstack.fixtures"]
