"""Data of the minitron_cloze lm-eval task: the JSONL file beside this module (built by minitron)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(**kwargs):
    """`custom_dataset` hook of lm-eval: a DatasetDict with a `test` and a small `train` split."""
    import datasets

    items = datasets.Dataset.from_json(str(HERE / "minitron_cloze.jsonl"))
    n_train = min(8, len(items) // 4)
    return datasets.DatasetDict(
        {"test": items.select(range(n_train, len(items))), "train": items.select(range(n_train))}
    )
