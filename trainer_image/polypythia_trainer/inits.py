"""Initialisation studies: start a run from a trained model's per-tensor weight distribution.

Strategies (``init.strategy`` in the run config):

- ``pythia``: the standard recipe; the trainer has already applied it, nothing to do here.
- ``permute``: each reference tensor's entries in a random order (the exact multiset).
- ``empirical``: i.i.d. draws from each reference tensor's empirical quantile function
  (linear interpolation between sorted values).
- ``studentt``: a Student-t (loc, scale, df) fitted by maximum likelihood to each tensor
  (``polypythia_eval.tailfit``, the same fitter as the weight statistics and the report),
  then sampled; a tensor whose fit is Gaussian (nu unbounded) is sampled from the normal.
- ``matched-gaussian``: a normal with each tensor's mean and standard deviation.

Which tensors: every parameter of the model follows the same rule, LayerNorm weights and
biases included (they are part of the trained distribution too). Buffers (rotary
``inv_freq``, attention masks) are never touched. A constant tensor (e.g. an untrained
LayerNorm weight of ones) is copied unchanged by every strategy: it has no spread to sample.

Determinism: each tensor gets its own generator seeded from SHA-256 of (seed, tensor name),
so the result does not depend on tensor order, Python's hash seed or the process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polypythia.errors import UsageError
from polypythia_trainer.config import INIT_REFERENCE_FIELD as REFERENCE_FIELD
from polypythia_trainer.config import INIT_STRATEGIES as STRATEGIES
from polypythia_trainer.config import InitConfig, InitReference, StorageConfig

DERIVED = STRATEGIES[1:]
FIT_SAMPLE = 100_000  # entries the Student-t fit sees at most

# transformers renamed the GPT-NeoX output layer; seeds and lookups use the checkpoint name.
_ALIASES = {"lm_head.weight": "embed_out.weight", "embed_out.weight": "lm_head.weight"}
_CANONICAL = {"lm_head.weight": "embed_out.weight"}
# Buffers older GPT-NeoX checkpoints (e.g. the Pythia release) stored with the weights.
_LEGACY_BUFFERS = (".attention.bias", ".attention.masked_bias", ".inv_freq")


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from (run seed, tensor name), stable across processes."""
    canonical = _CANONICAL.get(name, name)
    digest = hashlib.sha256(f"{int(seed)}\0{canonical}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _is_constant(flat: torch.Tensor) -> bool:
    return flat.numel() == 0 or bool((flat == flat[0]).all())


def derive_tensor(
    strategy: str, reference: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """A new tensor of the reference's shape and dtype, drawn by ``strategy`` from its entries."""
    if strategy not in DERIVED:
        raise UsageError(f"init.strategy: {strategy!r} derives no tensors; use one of {DERIVED}")
    flat = reference.detach().reshape(-1).to("cpu")
    if not torch.isfinite(flat.float()).all():
        raise UsageError(f"{REFERENCE_FIELD}: reference tensor holds NaN or infinite values")
    if _is_constant(flat):
        return reference.detach().to("cpu").clone()
    if strategy == "permute":
        out = flat[torch.randperm(flat.numel(), generator=generator)]
    elif strategy == "empirical":
        out = _sample_quantiles(flat, generator)
    elif strategy == "matched-gaussian":
        values = flat.double()
        mean, std = values.mean(), values.std()
        out = torch.randn(flat.numel(), generator=generator, dtype=torch.float64) * std + mean
    else:
        out = _sample_studentt(flat, generator)
    return out.to(reference.dtype).reshape(reference.shape)


def _sample_quantiles(flat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Inverse-CDF sampling: uniform u -> sorted[u (n-1)], linearly interpolated."""
    ordered = torch.sort(flat.double()).values
    n = ordered.numel()
    pos = torch.rand(n, generator=generator, dtype=torch.float64) * (n - 1)
    low = pos.floor().long().clamp_(max=n - 2)
    frac = pos - low
    return ordered[low] + frac * (ordered[low + 1] - ordered[low])


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from the torch one (numpy has a Student-t sampler)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return np.random.default_rng(seed)


def _sample_studentt(flat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    rng = _numpy_rng(generator)
    values = flat.double().numpy()
    if values.size > FIT_SAMPLE:
        values = values[rng.choice(values.size, FIT_SAMPLE, replace=False)]
    if values.size < 8:  # too few to fit a tail: the matched normal
        loc, scale, df = float(values.mean()), float(values.std()), float("inf")
    else:
        loc, scale, df = fit_studentt(values)
    noise = (
        rng.standard_t(df, flat.numel()) if np.isfinite(df) else rng.standard_normal(flat.numel())
    )
    return torch.from_numpy(loc + scale * noise)


def fit_studentt(values: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood (loc, scale, df) of a Student-t; df is ``inf`` for a Gaussian fit.

    The project's one tail fitter (``polypythia_eval.tailfit``) on all the values given.
    """
    from polypythia_eval.tailfit import fit_tail

    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("a Student-t fit needs at least two distinct values")
    fit = fit_tail(x, sample=max(x.size, 8))
    return fit.loc, fit.scale, fit.nu


def derive_state(
    strategy: str, reference_state: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """Every tensor of ``reference_state`` derived by ``strategy``, deterministic in ``seed``."""
    out = {}
    for name in sorted(reference_state):
        gen = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, name))
        try:
            out[name] = derive_tensor(strategy, reference_state[name], gen)
        except UsageError as exc:
            raise UsageError(f"{exc} (tensor {name})") from None
    return out


def load_reference_state(
    reference: InitReference, *, storage: StorageConfig | None = None, work_dir: Path
) -> dict[str, torch.Tensor]:
    """The tensors of a reference checkpoint: a model folder, or a run's complete step."""
    from polypythia.storage import RunStore
    from polypythia.storage.base import StorageNotFound

    if reference.path is not None:
        return _read_safetensors(Path(reference.path))
    assert reference.uri is not None and reference.step is not None  # InitReference.from_dict
    step = reference.step
    runs = RunStore.open(reference.uri, **(storage.connection() if storage else {}))
    try:
        folder = runs.local_path(step) or runs.fetch_checkpoint(
            step, Path(work_dir) / "init-reference" / f"step{step}"
        )
    except StorageNotFound:
        raise UsageError(
            f"{REFERENCE_FIELD}: {runs.uri} has no complete checkpoint at step {step} "
            f"(complete: {runs.complete_checkpoints() or 'none'})"
        ) from None
    return _read_safetensors(folder)


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        raise UsageError(f"{REFERENCE_FIELD}: {folder} holds no *.safetensors checkpoint")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as exc:  # safetensors raises its own untyped errors on bad files
            raise UsageError(
                f"{REFERENCE_FIELD}: {file}: not a readable safetensors file ({exc})"
            ) from None
    return state


def match_reference(model: nn.Module, reference_state: dict[str, torch.Tensor]) -> dict:
    """Reference tensors keyed by the model's parameter names; every shape checked."""
    params = dict(model.named_parameters())
    buffers = set(dict(model.named_buffers()))
    matched, used = {}, set()
    for name, param in params.items():
        key = name if name in reference_state else _ALIASES.get(name)
        if key not in reference_state:
            raise UsageError(f"{REFERENCE_FIELD}: reference checkpoint lacks parameter {name}")
        ref = reference_state[key]
        if tuple(ref.shape) != tuple(param.shape):
            raise UsageError(
                f"{REFERENCE_FIELD}: tensor {name} has shape {tuple(ref.shape)} in the reference "
                f"but {tuple(param.shape)} in this run's model"
            )
        matched[name] = ref
        used.add(key)
    extra = [
        k
        for k in sorted(set(reference_state) - used)
        if k not in buffers and not k.endswith(_LEGACY_BUFFERS)
    ]
    if extra:
        raise UsageError(
            f"{REFERENCE_FIELD}: reference has tensors this run's model lacks: {', '.join(extra)}"
        )
    return matched


@torch.no_grad()
def apply_init(
    model: nn.Module,
    init: InitConfig,
    weight_seed: int,
    *,
    storage: StorageConfig | None = None,
    work_dir: Path,
) -> None:
    """Overwrite the model's parameters in place with the run's init strategy (buffers untouched)."""
    if init.strategy == "pythia":
        return
    assert init.reference is not None  # InitConfig.from_dict refuses a derived init without one
    state = load_reference_state(init.reference, storage=storage, work_dir=work_dir)
    derived = derive_state(init.strategy, match_reference(model, state), weight_seed)
    for name, param in model.named_parameters():
        param.copy_(derived[name].to(device=param.device, dtype=param.dtype))
