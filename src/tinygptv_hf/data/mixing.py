"""Mixing datasets by ratio and splitting a stream across ranks, with the `datasets` primitives."""

from datasets import interleave_datasets
from datasets.distributed import split_dataset_by_node


def mix_datasets(datasets_with_ratios, seed: int = 42, stopping_strategy: str = "all_exhausted"):
    """One stream drawing each next sample from dataset ``i`` with probability ``ratio_i / sum(ratios)``.

    ``datasets_with_ratios`` is a sequence of ``(dataset, ratio)`` or a mapping ``{name: (dataset, ratio)}``;
    ratios are the recipe's ``sample_ratio`` (stage 4: refcoco 25, gqa 50, ...). The original draws a dataset per
    *batch*; drawing per sample gives the same proportions and lets one batch mix tasks. The default
    ``"all_exhausted"`` keeps re-reading the smaller datasets until every one has been seen once, so a small
    dataset is not cut off by a large one; ``"first_exhausted"`` stops at the first dataset that runs out. Draws
    count rows, so a record a reader skips (see `tinygptv_hf.data.samples`) takes its dataset's draw.
    """
    pairs = (
        list(datasets_with_ratios.values())
        if isinstance(datasets_with_ratios, dict)
        else list(datasets_with_ratios)
    )
    if not pairs:
        raise ValueError("no datasets to mix")
    ratios = [float(ratio) for _, ratio in pairs]
    if any(r <= 0 for r in ratios):
        raise ValueError(f"ratios must be positive, got {ratios}")
    if len(pairs) == 1:
        return pairs[0][0]
    total = sum(ratios)
    return interleave_datasets(
        [dataset for dataset, _ in pairs],
        probabilities=[r / total for r in ratios],
        seed=seed,
        stopping_strategy=stopping_strategy,
    )


def shard_for_rank(dataset, rank: int, world_size: int):
    """The part of a stream that ``rank`` reads: whole shards when ``n_shards`` is a multiple of ``world_size``
    (keep it so: every rank then reads only its own files), otherwise every ``world_size``-th sample."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)
