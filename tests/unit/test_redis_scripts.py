"""The Redis scripts' text: what every one of them must do, checked on the source."""

from __future__ import annotations

import re

from underway.stores import redis_scripts

# Scripts that never meet a queued job (they act on running or finished jobs only), or
# that absorb the intake list themselves where needed (ENQUEUE).
NO_INTAKE = {"ENQUEUE", "RENEW", "PROGRESS", "APPEND", "EXPIRED", "PURGE"}


def _scripts() -> dict[str, str]:
    return {
        name: text
        for name, text in vars(redis_scripts).items()
        if re.fullmatch(r"[A-Z][A-Z_]*", name) and isinstance(text, str) and "redis.call" in text
    }


def test_every_script_that_may_meet_a_queued_job_absorbs_the_intake_list_first() -> None:
    scripts = _scripts()
    assert {"GET", "APPLY_AND_CLAIM", "EVENTS", "ENQUEUE", "RENEW"} <= scripts.keys()
    missing = sorted(
        name
        for name, text in scripts.items()
        if name not in NO_INTAKE and text not in redis_scripts.ABSORBING
    )
    assert missing == []


def test_a_submission_stores_the_intake_list_before_it_claims_or_queues_in_full() -> None:
    text = redis_scripts.ENQUEUE
    assert text.index("absorb()\nlocal a = cjson.decode(blob)") > text.index("K_INTAKE, blob")
