"""`python manage.py underway worker|jobs|show|watch|submit|cancel|delete|purge ...`

The `underway` command line with Django's settings loaded and this project's tasks
(see `underway.django.cli`). `python manage.py underway --help` lists the commands.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from ...cli import run_cli


class Command(BaseCommand):
    help = "underway's command line (worker, jobs, show, watch, submit, ...) on this project"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="an underway command")

    def run_from_argv(self, argv: list[str]) -> None:
        # The underway command group parses its own options (Django's parser would
        # refuse them); its errors are already one line on stderr.
        try:
            code = run_cli(argv[2:])
        finally:
            connections.close_all()
        if code:
            raise SystemExit(code)

    def handle(self, *args: Any, **options: Any) -> None:
        """For `call_command("underway", "jobs", "--json")`."""
        code = run_cli(args)
        if code:
            raise CommandError(f"underway {' '.join(args)} exited with {code}", returncode=code)
