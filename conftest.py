"""Fixtures shared by every test folder: real servers, started and stopped by the tests."""

from cai_common import aio

aio.install()  # as every service does at start-up: in-process tests see the same asyncio

pytest_plugins = ["cai_devstack.fixtures"]
