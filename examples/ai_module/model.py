"""The AI code being wrapped: a stand-in for a generative model that streams tokens.

A real model (llama.cpp, transformers, an inference server's client) would go here;
what matters to the wrapper is the shape: a slow call that yields tokens one by one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

ANSWER = (
    "Long operations are best run as jobs. The request that starts one returns at once "
    "with the job's id; the work goes on in the background and reports its progress and "
    "its partial results as it goes, which for a language model means each token as soon "
    "as it is generated. Anyone allowed can poll the job's status, read what has been "
    "generated so far, or cancel it when the answer is clearly going nowhere. When the "
    "job ends, its result stays available for a while and then expires on its own, so "
    "nothing piles up. The caller never waits on an open connection that a proxy might "
    "cut after a minute, and a slow model never holds a web worker hostage. That is the "
    "whole idea: start, watch, cancel if needed, and collect the result."
)


class FakeLanguageModel:
    """Streams a canned reply to any prompt at `tokens_per_second`."""

    def __init__(self, tokens_per_second: float = 4.0) -> None:
        self.tokens_per_second = tokens_per_second

    def generate(self, prompt: str, max_tokens: int = 400) -> Iterator[str]:
        words = f"You asked: {prompt.strip()!r}. {ANSWER}".split()
        # Like a real tokenizer's pieces: each but the first carries its leading space.
        tokens = [words[0], *(f" {word}" for word in words[1:])]
        for token in tokens[:max_tokens]:
            time.sleep(1.0 / self.tokens_per_second)  # the model thinking
            yield token
