"""Raw safetensors I/O for streaming conversion: read one tensor's bytes, write a shard tensor by tensor.

Why not safetensors.torch.save_file: it needs every tensor of a shard in memory at once. Here the header is
computed up front from the planned (name, dtype, shape) list, then tensors are appended one at a time, so a
converter's peak memory is one tensor, not one shard; tensors that are not converted are copied as raw byte
ranges in chunks (bit-exact by construction, never decoded). Reads use positional file reads rather than
mmap so the pages read do not linger in the process's resident set.

File format (https://github.com/huggingface/safetensors): 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}} padded with spaces to a
multiple of 8, then the data section with tensors back to back in header order.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from angelcli.errors import IntegrityError

TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
ST_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}
COPY_CHUNK = 64 << 20


@dataclass(frozen=True)
class RawTensor:
    """Where one tensor lives in a shard: absolute byte range, safetensors dtype string, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_layout(path: Path) -> tuple[list[RawTensor], dict[str, str]]:
    """Header of one shard -> tensors in data order (absolute offsets) and the __metadata__ dict."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        meta = json.loads(fh.read(n))
    base = 8 + n
    out = [RawTensor(k, v["dtype"], tuple(v["shape"]), base + v["data_offsets"][0], base + v["data_offsets"][1])
           for k, v in meta.items() if k != "__metadata__"]
    out.sort(key=lambda t: t.begin)
    return out, dict(meta.get("__metadata__") or {})


def read_tensor(fh, raw: RawTensor) -> torch.Tensor:
    """Read one tensor from an open binary file handle (positional read, no mmap)."""
    buf = bytearray(raw.nbytes)
    view = memoryview(buf)
    got = 0
    while got < raw.nbytes:
        n = os.preadv(fh.fileno(), [view[got:]], raw.begin + got)
        if n <= 0:
            raise IntegrityError(f"{fh.name}: truncated while reading {raw.name}")
        got += n
    if raw.dtype not in TORCH_DTYPES:
        raise IntegrityError(f"{fh.name}: tensor {raw.name} has unsupported dtype {raw.dtype}")
    if raw.nbytes == 0:
        return torch.empty(raw.shape, dtype=TORCH_DTYPES[raw.dtype])
    return torch.frombuffer(buf, dtype=TORCH_DTYPES[raw.dtype]).reshape(raw.shape)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (contiguous, CPU)."""
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def nbytes_of(dtype: str, shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=TORCH_DTYPES[dtype]).element_size()


class ShardWriter:
    """Write a safetensors file whose tensor list is known in advance, one tensor at a time, in order.

    plan: [(name, dtype str, shape)] in the order the tensors will be written. The file is written at
    `path` (callers pass a temporary name and rename on success).
    """

    def __init__(self, path: Path, plan: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        self._order: list[tuple[str, int]] = []
        for name, dtype, shape in plan:
            size = nbytes_of(dtype, shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._order.append((name, size))
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * ((-len(blob)) % 8)
        self.total = 8 + len(blob) + offset
        self.path = path
        self._fh = open(path, "wb")
        self._fh.write(struct.pack("<Q", len(blob)))
        self._fh.write(blob)
        self._next = 0

    def _expect(self, name: str, size: int) -> None:
        if self._next >= len(self._order):
            raise RuntimeError(f"{self.path}: unplanned tensor {name}")
        want, want_size = self._order[self._next]
        if want != name or want_size != size:
            raise RuntimeError(f"{self.path}: expected {want} ({want_size} bytes), got {name} ({size} bytes)")
        self._next += 1

    def write(self, name: str, t: torch.Tensor) -> None:
        data = tensor_bytes(t)
        self._expect(name, data.nbytes)
        self._fh.write(data)

    def copy_raw(self, src_fh, raw: RawTensor, name: str | None = None) -> None:
        """Copy a tensor's bytes straight from a source shard (chunked, never decoded)."""
        self._expect(name or raw.name, raw.nbytes)
        pos = raw.begin
        while pos < raw.end:
            chunk = os.pread(src_fh.fileno(), min(COPY_CHUNK, raw.end - pos), pos)
            if not chunk:
                raise IntegrityError(f"{src_fh.name}: truncated while copying {raw.name}")
            self._fh.write(chunk)
            pos += len(chunk)

    def close(self) -> None:
        if self._next != len(self._order):
            missing = self._order[self._next][0]
            self._fh.close()
            raise RuntimeError(f"{self.path}: closed before writing {missing}")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self.path.stat().st_size != self.total:
            raise IntegrityError(f"{self.path}: wrote {self.path.stat().st_size} bytes, expected {self.total}")

    def abort(self) -> None:
        try:
            self._fh.close()
        finally:
            self.path.unlink(missing_ok=True)
