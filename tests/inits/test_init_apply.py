"""apply_init on a tiny GPT-NeoX from a reference folder and from a run's checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from polypythia.errors import UsageError
from polypythia.storage import RunStore
from polypythia_trainer.config import InitConfig, InitReference, StorageConfig
from polypythia_trainer.inits import apply_init, load_reference_state


def _model(hidden: int = 64, seed: int = 0) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=hidden,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        vocab_size=256,
        max_position_embeddings=64,
        rotary_pct=0.25,
        tie_word_embeddings=False,
    )
    return GPTNeoXForCausalLM(config)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 'trained' reference: random weights plus non-trivial LayerNorm weights."""
    model = _model(seed=1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name or "final_layer_norm" in name:
                param.add_(torch.randn(param.shape) * 0.1)
    folder = tmp_path_factory.mktemp("ref")
    model.save_pretrained(folder)
    return folder, {n: p.detach().clone() for n, p in model.named_parameters()}


def _buffers(model) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("strategy", ["permute", "empirical", "studentt", "matched-gaussian"])
def test_apply_init_from_a_local_folder(reference, tmp_path, strategy):
    folder, ref = reference
    model, twin = _model(), _model()
    before = _buffers(model)
    init = InitConfig.from_dict(
        {"strategy": strategy, "name": strategy, "reference": {"path": str(folder)}}
    )
    apply_init(model, init, 7, work_dir=tmp_path)
    apply_init(twin, init, 7, work_dir=tmp_path)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, before[name]), name
    for (name, param), (_, other) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(param, other), name
        assert not torch.equal(param, ref[name]) or bool(
            (ref[name] == ref[name].flatten()[0]).all()
        )
    if strategy == "permute":
        for name, param in model.named_parameters():
            got, want = param.flatten().sort().values, ref[name].flatten().sort().values
            assert torch.equal(got, want), name
    ids = torch.randint(0, 256, (1, 16))
    assert torch.isfinite(model(ids).logits).all()


def test_pythia_strategy_changes_nothing(reference, tmp_path):
    model = _model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    apply_init(model, InitConfig.from_dict({"strategy": "pythia"}), 0, work_dir=tmp_path)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_apply_init_from_a_run_checkpoint(reference, tmp_path):
    folder, ref = reference
    run = RunStore.open(str(tmp_path / "run"))
    run.commit_checkpoint(40, folder)
    via_run, via_path = _model(), _model()
    apply_init(
        via_run,
        InitConfig.from_dict(
            {"strategy": "empirical", "reference": {"uri": str(tmp_path / "run"), "step": 40}}
        ),
        3,
        storage=StorageConfig(uri=str(tmp_path)),
        work_dir=tmp_path / "work",
    )
    apply_init(
        via_path,
        InitConfig.from_dict({"strategy": "empirical", "reference": {"path": str(folder)}}),
        3,
        work_dir=tmp_path,
    )
    for (name, a), (_, b) in zip(via_run.named_parameters(), via_path.named_parameters()):
        assert torch.equal(a, b), name


def test_missing_checkpoint_names_the_field(reference, tmp_path):
    folder, _ = reference
    run = RunStore.open(str(tmp_path / "run"))
    run.commit_checkpoint(40, folder)
    with pytest.raises(UsageError, match=r"spec.inits\[\].reference: .* step 80 .*40"):
        load_reference_state(InitReference(uri=str(tmp_path / "run"), step=80), work_dir=tmp_path)
    with pytest.raises(UsageError, match=r"spec.inits\[\].reference: .* no \*.safetensors"):
        load_reference_state(InitReference(path=str(tmp_path / "empty")), work_dir=tmp_path)


def test_shape_mismatch_names_the_tensor_and_both_shapes(reference, tmp_path):
    folder, _ = reference
    wider = _model(hidden=128)
    with pytest.raises(UsageError, match=r"gpt_neox.embed_in.weight .*\(256, 64\).*\(256, 128\)"):
        apply_init(
            wider,
            InitConfig.from_dict({"strategy": "permute", "reference": {"path": str(folder)}}),
            0,
            work_dir=tmp_path,
        )
