"""MiniMaxM1Tokenizer: a thin wrapper over a Hugging Face `tokenizer.json` (tokenizers library)."""
from __future__ import annotations

import os
from typing import Any, Iterable

from minimax_m1.model_shards.checkpoint import CheckpointError

EOS_TOKEN = "<|endoftext|>"


class MiniMaxM1Tokenizer:
    def __init__(self, tokenizer: Any, eos_token: str | None = EOS_TOKEN):
        self._tok = tokenizer
        self.eos_token_id = tokenizer.token_to_id(eos_token) if eos_token else None
        self.pad_token_id = self.eos_token_id if self.eos_token_id is not None else 0

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "MiniMaxM1Tokenizer":
        from tokenizers import Tokenizer

        path = os.fspath(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise CheckpointError(f"no tokenizer.json at {file}")
        try:
            return cls(Tokenizer.from_file(file))
        except Exception as exc:  # the tokenizers library raises a bare Exception on bad files
            raise CheckpointError(f"{file} is not a valid tokenizer.json: {str(exc).splitlines()[0]}") from None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def backend(self) -> Any:
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str | list[str], return_tensors: str | None = None) -> dict[str, Any]:
        """Tokenise one text or a batch (left-padded), like transformers' tokenizers."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.encode(t) for t in texts]
        width = max((len(x) for x in ids), default=0)
        input_ids = [[self.pad_token_id] * (width - len(x)) + x for x in ids]
        mask = [[0] * (width - len(x)) + [1] * len(x) for x in ids]
        if return_tensors == "pt":
            import torch

            return {"input_ids": torch.tensor(input_ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r} is not supported (use 'pt' or None)")
        if isinstance(text, str):
            return {"input_ids": input_ids[0], "attention_mask": mask[0]}
        return {"input_ids": input_ids, "attention_mask": mask}

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Decode one sequence: a list/1-D tensor of ids, or a batch holding exactly one sequence."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            if len(ids) != 1:
                raise ValueError(f"decode takes one sequence; got a batch of {len(ids)} (use batch_decode)")
            ids = list(ids[0])
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch: Iterable[Any], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]
