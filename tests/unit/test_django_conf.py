"""`settings.UNDERWAY`: defaults, durations, and errors that name the key."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import ImproperlyConfigured

from underway.django.cli import APP_SPEC, with_app
from underway.django.conf import UnderwaySettings, load_settings


def test_no_setting_means_the_defaults() -> None:
    assert load_settings(None) == UnderwaySettings()
    assert load_settings({}).start_workers is False


def test_values_are_read_and_durations_parsed() -> None:
    s = load_settings({"STORE": "memory://", "WORKERS": 2, "START_WORKERS": True, "DRAIN": "1m"})
    assert (s.store, s.workers, s.start_workers, s.drain) == ("memory://", 2, True, 60.0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"STORES": "memory://"}, "unknown UNDERWAY key(s) STORES"),
        ({"WORKERS": 0}, "UNDERWAY['WORKERS'] must be a positive integer"),
        ({"WORKERS": True}, "UNDERWAY['WORKERS'] must be a positive integer"),
        ({"START_WORKERS": "yes"}, "UNDERWAY['START_WORKERS'] must be True or False"),
        ({"DRAIN": "soon"}, "UNDERWAY['DRAIN'] must be a duration"),
        ({"STORE": 3}, "UNDERWAY['STORE'] must be a store URL"),
        ("memory://", "UNDERWAY must be a dict"),
    ],
)
def test_a_bad_setting_is_named(raw: object, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        load_settings(raw)


def test_the_command_line_gets_the_projects_app_where_a_command_takes_one() -> None:
    assert with_app(["worker", "--workers", "2"]) == ["worker", APP_SPEC, "--workers", "2"]
    assert with_app(["jobs", "--json"]) == ["jobs", "--app", APP_SPEC, "--json"]
    assert with_app(["jobs", "--url", "http://h:1"]) == ["jobs", "--url", "http://h:1"]
    assert with_app(["--help"]) == ["--help"]
    assert with_app(["demo"]) == ["demo"]
