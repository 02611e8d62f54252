"""Synthetic generation workloads: a prompt of N tokens and a fixed budget of M new tokens.

Ids are ``prompt-N`` (N prompt tokens, batch 1); the new-token budget M comes from ``--decode-tokens``
(:data:`DEFAULT_NEW_TOKENS` when not given). Every run makes exactly M model calls: the prefill, which yields the
first new token, and M - 1 decode steps of one token each (EOS cannot stop it earlier). Encoder-decoder families
feed the prompt to the encoder and start the decoder from its start token; speech encoders take the config's full
input window of silence (``input_features`` of ``num_mel_bins x 2 * max_source_positions`` frames), so N does not
apply to them.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from opmeter.errors import OpmeterError

DEFAULT_WORKLOAD = "prompt-512"
DEFAULT_NEW_TOKENS = 32
WORKLOADS: dict[str, str] = {
    "prompt-N": "N prompt tokens (any N >= 1, e.g. prompt-512), batch 1, M new tokens (--decode-tokens, default "
                f"{DEFAULT_NEW_TOKENS})",
}
PROMPT_TOKEN = 1000
"""Id of every prompt token (clamped below the vocabulary size): the run's cost does not depend on it."""

_ID = re.compile(r"^prompt-(\d+)$")


@attrs.frozen
class PromptWorkload:
    """N prompt tokens and M new tokens, batch 1 (see the module docstring)."""

    prompt_tokens: int
    new_tokens: int = DEFAULT_NEW_TOKENS
    batch: int = 1

    def __attrs_post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.new_tokens < 1 or self.batch < 1:
            raise OpmeterError(f"a prompt workload needs N >= 1 prompt tokens and M >= 1 new tokens, got "
                               f"N={self.prompt_tokens} M={self.new_tokens}")

    @property
    def id(self) -> str:
        return f"prompt-{self.prompt_tokens}"

    @property
    def max_new_tokens(self) -> int:
        return self.new_tokens

    @property
    def decode_steps(self) -> int:
        """One-token decode calls after the prefill: M - 1."""
        return self.new_tokens - 1

    def describe(self) -> dict[str, str]:
        return {"prompt": f"{self.prompt_tokens} synthetic tokens, batch {self.batch}",
                "new tokens": f"{self.new_tokens} (fixed budget: 1 prefill + {self.decode_steps} decode steps)"}

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "batch": self.batch}

    def with_new_tokens(self, tokens: int) -> PromptWorkload:
        return attrs.evolve(self, new_tokens=tokens)


def parse_workload(workload_id: str | None, new_tokens: int | None) -> PromptWorkload:
    """The workload of ``--workload prompt-N`` and ``--decode-tokens M`` (defaults: module docstring).

    Raises
    ------
    OpmeterError
        For an id that is not ``prompt-N`` or sizes below 1.
    """
    wid = workload_id or DEFAULT_WORKLOAD
    match = _ID.match(wid)
    if match is None:
        raise OpmeterError(f"unknown hf workload {wid!r}; expected prompt-N (e.g. {DEFAULT_WORKLOAD})")
    return PromptWorkload(int(match.group(1)), DEFAULT_NEW_TOKENS if new_tokens is None else int(new_tokens))
