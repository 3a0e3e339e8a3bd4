"""A process that submits no-op jobs until it is killed, for the durability tests.

    python -m tests.crash.submitter_app STORE_URL

Prints `ready`, then the id of each job once `submit()` has returned for it: every
id printed is a job the store acknowledged. It never stops by itself.
"""

from __future__ import annotations

import sys

from underway import Underway


def main(argv: list[str] | None = None) -> int:
    url = (argv if argv is not None else sys.argv[1:])[0]
    uw = Underway(url)

    @uw.task
    def noop() -> None:
        return None

    uw.store.ping()
    print("ready", flush=True)
    while True:
        print(uw.submit("noop").id, flush=True)


if __name__ == "__main__":
    sys.exit(main())
