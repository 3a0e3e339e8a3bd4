"""Send N concurrent POSTs and print the answers as one JSON list, from a process of
its own, so that building and reading a hundred requests does not compete with a
test's own measurements for the interpreter:

    python -m tests.support.concurrent_posts URL N
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx


async def post_all(url: str, count: int) -> list[Any]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        answers = await asyncio.gather(*(http.post(url) for _ in range(count)))
    return [a.json() for a in answers]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(post_all(sys.argv[1], int(sys.argv[2])))))
