"""Selective, memory-mapped reading of safetensors checkpoints (one file, or shards + index json).

Only headers are parsed up front, and only for the files a caller touches. `read` maps the file
and copies out exactly the bytes of the requested tensor (or of a range of its rows), and records
every range it read in `reads`, so a test can prove that an expert shard never reads another
shard's experts. That is what makes a 456B checkpoint loadable by many workers.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from dataclasses import dataclass

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match the model; one line naming the culprit."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    file: str  # absolute path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class ByteRange:
    file: str
    begin: int
    end: int


class SafetensorsCheckpoint:
    """Tensor names -> locations for a checkpoint folder; reads tensors or row ranges on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.reads: list[ByteRange] = []  # every tensor data range copied out, in order
        self._maps: dict[str, mmap.mmap] = {}
        self._headers: dict[str, dict[str, TensorEntry]] = {}
        index = os.path.join(self.path, INDEX_NAME)
        single = os.path.join(self.path, SINGLE_NAME)
        if os.path.isfile(index):
            self._file_of = self._read_index(index)
        elif os.path.isfile(single):
            self._file_of = {name: single for name in self._header(single)}
        else:
            found = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors")) if os.path.isdir(self.path) else []
            if len(found) != 1:
                raise CheckpointError(f"no {SINGLE_NAME} or {INDEX_NAME} in {self.path}")
            single = os.path.join(self.path, found[0])
            self._file_of = {name: single for name in self._header(single)}

    # ---- discovery ----------------------------------------------------------------------------
    def _read_index(self, index: str) -> dict[str, str]:
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc.__class__.__name__}: {exc})") from None
        files = {name: os.path.join(self.path, file) for name, file in weight_map.items()}
        for file in sorted(set(files.values())):
            if not os.path.isfile(file):
                raise CheckpointError(f"checkpoint file {os.path.basename(file)} listed in {INDEX_NAME} is missing")
        return files

    def _header(self, file: str) -> dict[str, TensorEntry]:
        if file in self._headers:
            return self._headers[file]
        base = os.path.basename(file)
        size = os.path.getsize(file)
        with open(file, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{base} is not a safetensors file: shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(f"{base} is corrupt: header length {n} exceeds the file size {size}")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{base} is corrupt: its header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{base} is corrupt: its header is not a JSON object")
        data_start = 8 + n
        entries = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = _DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                b, e = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{base} is corrupt: bad header entry for tensor '{name}'") from None
            numel = 1
            for s in shape:
                numel *= s
            if e - b != numel * dtype.itemsize or b < 0:
                raise CheckpointError(f"{base} is corrupt: tensor '{name}' has {e - b} bytes for shape {list(shape)} {info['dtype']}")
            if data_start + e > size:
                raise CheckpointError(f"{base} is truncated: tensor '{name}' needs bytes up to {data_start + e}, the file has {size}")
            entries[name] = TensorEntry(name, file, dtype, shape, data_start + b, data_start + e)
        self._headers[file] = entries
        return entries

    # ---- queries --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def entry(self, name: str) -> TensorEntry:
        file = self._file_of.get(name)
        if file is None:
            raise CheckpointError(f"missing tensor '{name}' in checkpoint {self.path}")
        entry = self._header(file).get(name)
        if entry is None:
            raise CheckpointError(f"tensor '{name}' is listed in {INDEX_NAME} for {os.path.basename(file)} but that file does not hold it")
        return entry

    def files_for(self, names: list[str]) -> list[str]:
        """The shard files a reader of these tensors must open."""
        return sorted({os.path.basename(self._file_of[n]) for n in names if n in self._file_of})

    @property
    def bytes_read(self) -> int:
        return sum(r.end - r.begin for r in self.reads)

    # ---- reading --------------------------------------------------------------------------------
    def read(self, name: str, rows: tuple[int, int] | None = None, expect_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Copy out a tensor, or rows [a, b) of its first dim, reading only those bytes."""
        entry = self.entry(name)
        if expect_shape is not None and tuple(expect_shape) != entry.shape:
            raise CheckpointError(f"tensor '{name}' has shape {list(entry.shape)}, expected {list(expect_shape)}")
        shape, begin, end = entry.shape, entry.begin, entry.end
        if rows is not None:
            a, b = rows
            if not shape or not (0 <= a <= b <= shape[0]):
                raise CheckpointError(f"rows {a}:{b} are out of range for tensor '{name}' of shape {list(shape)}")
            row_bytes = (entry.nbytes // shape[0]) if shape[0] else 0
            begin, end = entry.begin + a * row_bytes, entry.begin + b * row_bytes
            shape = (b - a, *shape[1:])
        self.reads.append(ByteRange(entry.file, begin, end))
        if end == begin:
            return torch.empty(shape, dtype=entry.dtype)
        mm = self._map(entry.file)
        with warnings.catch_warnings():  # the map is read-only; we clone before anyone can write
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(mm, dtype=entry.dtype, count=(end - begin) // entry.dtype.itemsize, offset=begin)
        return flat.clone().view(shape)  # own the memory: the map may be closed later

    def _map(self, file: str) -> mmap.mmap:
        mm = self._maps.get(file)
        if mm is None:
            with open(file, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[file] = mm
        return mm

    def close(self) -> None:
        # Tensors handed out are clones, so the maps can go. frombuffer may still pin a map until
        # garbage collection; closing then raises BufferError, which is harmless to skip.
        for mm in self._maps.values():
            try:
                mm.close()
            except BufferError:
                pass
        self._maps.clear()

    def __enter__(self) -> "SafetensorsCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write one safetensors file (sorted names, aligned header) without extra dependencies."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
