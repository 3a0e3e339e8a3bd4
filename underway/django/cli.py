"""`manage.py underway ...`: the `underway` command line on this project's `Underway`.

The commands that take an app (`worker`, `serve` as an argument; the job commands as
`--app`) are given `underway.django.cli:app`, which names the app config's instance;
everything else goes to the `underway` command group unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from ..cli import cli as underway_cli
from ..cli import run

APP_SPEC = "underway.django.cli:app"


def __getattr__(name: str) -> Any:
    # Read when a command loads APP_SPEC; the instance itself lives on the app config.
    if name == "app":
        from . import get_app

        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def with_app(args: Sequence[str]) -> list[str]:
    """`args` with this project's app added where the subcommand takes one."""
    args = list(args)
    if not args or args[0] not in underway_cli.commands:
        return args
    command = underway_cli.commands[args[0]]
    for param in command.params:
        if param.name != "app_spec":
            continue
        if isinstance(param, click.Argument):
            return [args[0], APP_SPEC, *args[1:]]
        given = any(a in param.opts or a.startswith(("--app=", "--url")) for a in args[1:])
        return args if given else [args[0], *param.opts[:1], APP_SPEC, *args[1:]]
    return args


def run_cli(args: Sequence[str]) -> int:
    """Run an `underway` command line on this project's app; its exit code."""
    return run(with_app(args))


__all__ = ["APP_SPEC", "run_cli", "with_app"]
