"""Incremental detokenisation for streaming, with stop strings.

A byte-level tokenizer can split one UTF-8 character over several tokens; decoding such a prefix
ends in U+FFFD. The detokenizer only releases text once it decodes cleanly, so a delta never holds
half a character; `flush` releases whatever is left when the sequence ends. With stop strings it
also holds back the last (longest stop - 1) characters, so a stop string split over two deltas is
never half-emitted, and generation ends before the stop string's first occurrence.
"""
from __future__ import annotations

_REPLACEMENT = "\ufffd"
_PROMPT_CONTEXT = 4  # prompt tokens decoded before the output, for tokenizers whose spacing depends on context


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], stop: tuple[str, ...] = ()):
        self._tok = tokenizer  # a tokenizers.Tokenizer
        self._ids = list(prompt_ids[-_PROMPT_CONTEXT:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._pending = ""  # decoded text not released yet (held back for stop matching)
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def push(self, token_id: int) -> str:
        """Add one output token; return the text that may be released now. Sets `stopped` when a
        stop string appeared (the text before it is returned, nothing after)."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._decode(self._ids[self._prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(_REPLACEMENT):
            return ""  # an incomplete character (or nothing new yet)
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(full[len(prefix):], final=False)

    def flush(self) -> str:
        """The sequence ended: release everything left, incomplete characters as U+FFFD."""
        if self.stopped:
            return ""
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._decode(self._ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self._ids)
        return self._release(full[len(prefix):], final=True)

    def _release(self, new: str, final: bool) -> str:
        text = self._pending + new
        if self._stop:
            hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
            if hits:
                self.stopped = True
                self._pending = ""
                return text[:min(hits)]
        keep = 0 if final else min(self._hold, len(text))
        self._pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]


__all__ = ["IncrementalDetokenizer"]
