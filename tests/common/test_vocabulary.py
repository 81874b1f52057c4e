"""Run outcomes and step results are named once (vocabulary.Outcome, StepResult) and the Lua
prologue carries them, as it carries the statuses and task states."""

from __future__ import annotations

import re
from importlib import resources

from sessionq.common.keys import Keys
from sessionq.common.scripts.contract import VOCABULARY
from sessionq.common.scripts.contracts import CONTRACTS
from sessionq.common.vocabulary import Outcome, StepResult


def test_every_prologue_carries_outcomes_and_step_results() -> None:
    assert VOCABULARY["OUTCOME"] is Outcome and VOCABULARY["STEP_RESULT"] is StepResult
    prologue = CONTRACTS["emit"].prologue({name: Keys("sq:").session for name in
                                           CONTRACTS["emit"].builders})  # fmt: skip
    assert "local OUTCOME = {'succeeded', 'failed', 'rejected', 'canceled', 'requeue'}" in prologue
    assert ("local STEP_RESULT = {'succeeded', 'failed', 'retrying', 'requeued', 'canceled', "
            "'stale'}") in prologue  # fmt: skip


def test_the_words_run_lua_compares_and_returns_are_the_enums() -> None:
    body = (resources.files("sessionq.common") / "lua" / "run.lua").read_text()
    compared = set(re.findall(r"outcome [~=]= '(\w+)'", body))
    returned = set(re.findall(r"result = '(\w+)'", body)) | set(
        re.findall(r"return '(\w+)', 0", body)
    )
    assert compared and compared <= set(Outcome)
    assert returned and returned <= set(StepResult)
