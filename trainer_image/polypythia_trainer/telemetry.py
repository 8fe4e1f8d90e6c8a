"""Instability telemetry: the per-step quantities that reveal trouble early, kept cheap.

- `AttentionLogitProbe`: max |q.k|/sqrt(d_head) of layer 0 (rotary applied, causal
  positions only), from hooks on the first micro-batch of each step;
- `flops_per_token` / `device_peak_flops`: MFU's numerator and denominator;
- `TelemetryBuffer`: records buffered on rank 0 and flushed in batches to storage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import nn

from polypythia.storage.base import StorageUnavailable

log = logging.getLogger(__name__)

# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' data sheets.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "V100": 125e12,
}
PEAK_ENV = "POLYPYTHIA_PEAK_FLOPS"


def flops_per_token(config, sequence_length: int) -> float:
    """Training FLOPs per token: 6N (N without the input embedding) + 12 L T d (attention).

    The PaLM appendix-B count, which Pythia/GPT-NeoX MFU figures also use.
    """
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    per_layer = 4 * d * d + 4 * d + 2 * d * config.intermediate_size + config.intermediate_size + d
    norms = 4 * d * layers + 2 * d
    n = layers * per_layer + norms + d * vocab
    return 6.0 * n + 12.0 * layers * sequence_length * d


def device_peak_flops(device: torch.device) -> float | None:
    """Peak FLOP/s per device: $POLYPYTHIA_PEAK_FLOPS, else the GPU's known peak, else None."""
    configured = os.environ.get(PEAK_ENV)
    if configured:
        return float(configured)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS.items():
        if key in name:
            return peak
    return None


class AttentionLogitProbe:
    """Max pre-softmax attention logit of one layer, measured when ``armed``.

    A forward pre-hook on the attention module keeps the rotary (cos, sin); a forward hook
    on its QKV projection rebuilds q and k exactly as `GPTNeoXAttention` does. Armed once
    per step, it scores the first ``rows`` sequences of the first micro-batch: one extra
    (rows, heads, T, T) score matrix without grad, a sample of the step, not its maximum.
    """

    def __init__(self, attention: nn.Module, rows: int = 1) -> None:
        from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

        self._rotary = apply_rotary_pos_emb
        self.head_size = attention.head_size
        self.rows = rows
        self.armed = False
        self.value: float | None = None
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handles = [
            attention.register_forward_pre_hook(self._keep_rope, with_kwargs=True),
            attention.query_key_value.register_forward_hook(self._measure),
        ]

    def _keep_rope(self, module, args, kwargs) -> None:
        self._rope = kwargs.get("position_embeddings") if self.armed else None

    @torch.no_grad()
    def _measure(self, module, args, output: torch.Tensor) -> None:
        if not self.armed or self._rope is None:
            return
        rows = output.detach()[: self.rows]  # (b, T, 3 * d)
        qkv = rows.view(*rows.shape[:-1], -1, 3 * self.head_size).transpose(1, 2)
        q, k, _ = qkv.chunk(3, dim=-1)  # (B, nh, T, hs)
        cos, sin = self._rope
        q, k = self._rotary(q, k, cos[: self.rows], sin[: self.rows])
        scores = (q.float() @ k.float().transpose(-1, -2)).abs_() * self.head_size**-0.5
        t = scores.shape[-1]
        causal = torch.ones(t, t, dtype=torch.bool, device=scores.device).tril_()
        self.value = float(scores.masked_fill_(~causal, 0.0).amax())
        self.armed = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class TelemetryBuffer:
    """Per-step records, flushed through ``sink(records)`` every ``flush_every`` steps."""

    def __init__(self, sink: Callable[[list[dict]], None], flush_every: int) -> None:
        self.sink = sink
        self.flush_every = flush_every
        self.records: list[dict] = []

    def add(self, record: dict) -> None:
        self.records.append(record)
        if len(self.records) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Hand the records to the sink; when storage is down (after its own retries) keep
        them for the next flush and carry on training: nothing recorded is dropped."""
        if self.records:
            records, self.records = self.records, []
            try:
                self.sink(records)
            except StorageUnavailable as exc:
                self.records = records + self.records
                log.warning("telemetry kept in memory (%d records): %s", len(self.records), exc)
