"""Fixtures of the plugin tests: lmms-eval's task index, built once per session. Each ``TaskManager``
walks lmms-eval's whole task tree (about 5 s here); the tests read the index and build tasks from it,
which leaves it unchanged."""

from __future__ import annotations

import pytest

from awares_lmms.plugin import hooks


@pytest.fixture(scope="session")
def awares_task_manager():
    """The TaskManager lmms-eval's entry points build for ``--model awares``: our directory indexed, our
    names winning clashes."""
    hooks.install()  # what the `awares` entry point does in every lmms-eval run
    from lmms_eval.tasks import TaskManager

    return TaskManager("WARNING", model_name="awares")


@pytest.fixture(scope="session")
def stock_task_manager():
    """The TaskManager they build for any other model: lmms-eval's own index."""
    hooks.install()
    from lmms_eval.tasks import TaskManager

    return TaskManager("WARNING", model_name="other_model")
