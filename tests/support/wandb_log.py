"""Reading an offline W&B run file back, with W&B's own protobufs (no network, no `wandb sync`)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def wandb_history(path: Path) -> list[dict]:
    """History rows of an offline W&B run file: W&B's transaction log is the LevelDB log
    format (a 7-byte `:W&B` header, then 32 KiB blocks of checksummed, possibly split
    records, each a `wandb_internal_pb2.Record`), read here with W&B's own protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, rows = 32 * 1024, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in record.history.item})  # fmt: skip
    return rows
