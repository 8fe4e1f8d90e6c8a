"""`polypythia.typed`: a frozen dataclass from a camelCase block, with one-line errors
that name the field's full path (what a user reads when a sweep or run config is bad)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from polypythia.errors import UsageError
from polypythia.output import camel
from polypythia.typed import FIXED, build, camel_names


@dataclass(frozen=True)
class Shock:
    step: int
    factor: float = 1.0


@dataclass(frozen=True)
class Checked:
    step: int

    @classmethod
    def from_dict(cls, block: dict, path: str) -> Checked:
        out = build(cls, block, path)
        if out.step < 0:
            raise UsageError(f"{path}.step: must be >= 0, got {out.step}")
        return out


@dataclass(frozen=True)
class Block:
    num_layers: int
    learning_rate: float = 0.5
    gpus: int | float = 0
    name: str | None = None
    qk_layernorm: bool = field(default=False, metadata={"key": "qkLayerNorm"})
    internal: int = field(default=7, metadata=FIXED)
    shocks: tuple[Shock, ...] = ()
    checked: tuple[Checked, ...] = ()
    sizes: tuple[int, ...] = ()


def test_reads_camel_keys_types_and_defaults():
    got = build(
        Block,
        {
            "numLayers": 6,
            "learningRate": 1,
            "gpus": 2,
            "qkLayerNorm": True,
            "shocks": [{"step": 3}],
            "sizes": [1, 2],
            "unknownKey": "ignored",
        },
        "model",
    )
    assert got == Block(
        num_layers=6,
        learning_rate=1.0,
        gpus=2.0,
        qk_layernorm=True,
        shocks=(Shock(step=3),),
        sizes=(1, 2),
    )
    assert isinstance(got.learning_rate, float)


def test_absent_and_null_take_the_default_and_fixed_fields_are_not_read():
    got = build(Block, {"numLayers": 2, "learningRate": None, "internal": 99}, "model")
    assert got.learning_rate == 0.5
    assert got.internal == 7


def test_given_fields_are_not_read():
    assert build(Block, {"numLayers": "x"}, "model", num_layers=4).num_layers == 4


@pytest.mark.parametrize(
    "block, message",
    [
        ({}, "model.numLayers: required field is missing"),
        ({"numLayers": None}, "model.numLayers: required field is missing"),
        ({"numLayers": True}, "model.numLayers: expected int, got True"),
        ({"numLayers": 2.5}, "model.numLayers: expected int, got 2.5"),
        ({"numLayers": 1, "learningRate": "x"}, "model.learningRate: expected float, got 'x'"),
        ({"numLayers": 1, "gpus": True}, "model.gpus: expected int or float, got True"),
        ({"numLayers": 1, "name": 5}, "model.name: expected str, got 5"),
        ({"numLayers": 1, "qkLayerNorm": "yes"}, "model.qkLayerNorm: expected bool, got 'yes'"),
        ({"numLayers": 1, "shocks": "soon"}, "model.shocks: expected list, got 'soon'"),
        ({"numLayers": 1, "shocks": ["x"]}, "model.shocks[0]: expected an object, got 'x'"),
        ({"numLayers": 1, "shocks": [{}]}, "model.shocks[0].step: required field is missing"),
        ({"numLayers": 1, "sizes": [1, "2"]}, "model.sizes[1]: expected int, got '2'"),
        ({"numLayers": 1, "checked": [{"step": -1}]}, "model.checked[0].step: must be >= 0"),
    ],
)
def test_errors_name_the_full_path(block, message):
    with pytest.raises(UsageError) as err:
        build(Block, block, "model")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_top_level_block_has_no_path_prefix():
    with pytest.raises(UsageError, match="^numLayers: required field is missing$"):
        build(Block, {}, "")


def test_an_unsupported_annotation_is_a_programming_error():
    @dataclass(frozen=True)
    class Odd:
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="unsupported type"):
        build(Odd, {"table": {}}, "x")


def test_camel_spelling():
    assert camel("min_history") == "minHistory"
    assert camel("adam_beta1") == "adamBeta1"
    assert camel("window") == "window"
    assert camel_names("min_history: must be in [2, window=128]") == (
        "minHistory: must be in [2, window=128]"
    )
    assert camel_names("common_mode_fraction: in (0, 1)") == "commonModeFraction: in (0, 1)"
