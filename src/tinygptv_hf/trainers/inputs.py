"""What the stage trainers train on: uniform samples (``turns``, ``image``), or a dataset in the Hub's
``messages`` + ``images`` layout, which is read through `read_messages` into uniform samples."""

import datasets

from ..data import read_messages


def training_samples(dataset):
    """``dataset`` as the collator's uniform samples, checked when the trainer is built rather than at its first batch.

    A `datasets.Dataset` / `IterableDataset` with a ``messages`` column becomes `read_messages(dataset)` (a stream:
    train with ``max_steps``); one with ``turns`` is used as it is; any other columns are an error. Other objects
    (a torch dataset of samples) are passed through unchecked.
    """
    if not isinstance(dataset, datasets.Dataset | datasets.IterableDataset):
        return dataset
    columns = dataset.column_names
    if columns is None:  # an IterableDataset whose features are not declared: its first record tells
        columns = list(next(iter(dataset), {}))
    if "turns" in columns:
        return dataset
    if "messages" in columns:
        return read_messages(dataset)
    raise ValueError(
        f"train_dataset has columns {columns}, neither 'messages' (the Hub layout, with 'images') nor 'turns' (the "
        "samples of the tinygptv_hf.data readers); read other layouts with a reader such as "
        "tinygptv_hf.data.read_messages."
    )
