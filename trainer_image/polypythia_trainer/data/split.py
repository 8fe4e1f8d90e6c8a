"""GPT-NeoX's train/valid/test split of one indexed dataset (``data.split: "969,30,1"``).

Source: EleutherAI/gpt-neox, ``megatron/data/data_utils.py``: ``get_train_valid_test_split_``
(the arithmetic below, including Python's round-half-to-even and the final shift that
makes the last index the dataset size) and ``build_train_valid_test_datasets`` (train,
validation and test are the items ``[s0, s1)``, ``[s1, s2)``, ``[s2, s3)`` of the file,
in file order; the train dataset is named ``train`` and asked for ``train_iters x
batch`` samples, without the 1.005 of the ``train-data-paths`` route). Pure.
"""

from __future__ import annotations

from polypythia.errors import UsageError

DATASET_NAME = "train"  # build_train_valid_test_datasets: build_dataset(0, "train")


def split_weights(split: str, field: str = "spec.data.split") -> list[float]:
    """The three weights of a split string (``,`` or ``/`` separated, missing ones 0), as
    GPT-NeoX reads it; a bad string is a UsageError naming ``field``."""
    separator = "," if "," in split else "/" if "/" in split else None
    parts = split.split(separator) if separator else [split]
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        weights = []
    if not weights or any(not w >= 0 or w == float("inf") for w in weights):
        raise UsageError(
            f"{field}: {split!r} is not a GPT-NeoX split; expected up to three non-negative "
            'numbers separated by "," or "/" (train, validation, test), e.g. "969,30,1"'
        )
    weights = (weights + [0.0, 0.0])[:3]
    if sum(weights) <= 0:
        raise UsageError(f"{field}: {split!r} gives every part weight 0; train needs some")
    return weights


def split_indices(split: str, size: int) -> tuple[int, int, int, int]:
    """``[0, s1, s2, size]``: the item boundaries of train, validation and test."""
    weights = split_weights(split)
    total = sum(weights)
    shares = [w / total for w in weights]
    index = [0]
    for i, share in enumerate(shares):
        index.append(index[i] + int(round(share * float(size))))
    diff = index[-1] - size
    for i in range(1, len(index)):
        index[i] -= diff
    return index[0], index[1], index[2], index[3]
