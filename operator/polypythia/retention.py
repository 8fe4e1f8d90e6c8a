"""Which checkpoints keep their optimiser state (``spec.checkpoints.optimizerState``). Pure.

The optimiser state (Adam's two moments, plus fp32 master weights under DeepSpeed fp16/bf16)
is two to six times a checkpoint's weights, and only a resume needs it: analysis (lm-eval,
weight statistics, branching with a fresh optimiser) reads the weights. With ``latest`` the
trainer keeps it where a resume or rewind may start: the newest complete checkpoint and the
resume-only ones (``resumeEvery``, also the last ``keepResume`` resume points that coincide
with planned steps, and a pinned rewind restart point); the planned checkpoints keep weights,
scheduler, RNG and data cursor.
The trainer (writing) and the cost estimate (planning) both ask this one function.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

POLICIES = ("all", "latest")
LEGACY_POLICY = "all"  # a run.json written before the field existed kept everything


def optimizer_state_kept(
    complete: Iterable[int],
    *,
    policy: str,
    planned: Collection[int],
    resume_every: int | None,
    keep_resume: int,
    pinned: Collection[int] = (),
) -> set[int]:
    """The steps among ``complete`` whose checkpoint keeps its optimiser state; a
    ``pinned`` one (a rewind's restart point, ``storage.pins``) always does."""
    if policy not in POLICIES:
        raise ValueError(f"checkpoints.optimizerState: {policy!r}; allowed: {', '.join(POLICIES)}")
    steps = sorted(set(complete))
    if policy == "all" or not steps:
        return set(steps)
    kept = {steps[-1], *(s for s in pinned if s in steps)}
    kept |= {s for s in steps if s not in planned}  # resume-only: pruned, never analysed
    if resume_every:
        resume_points = [s for s in steps if s > 0 and s % resume_every == 0]
        kept |= set(resume_points[-keep_resume:])
    return kept
