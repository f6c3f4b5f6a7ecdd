"""A small local multiple-choice task for lm-evaluation-harness, built from plain text.

The task is a cloze: each item is the first half of a sentence (`context`), and the model must pick
its true second half among `choices` continuations, the others being second halves of other
sentences of the same text. lm-eval scores each choice by its log-likelihood after the context
(`acc`) and by the log-likelihood per byte (`acc_norm`). A random model scores about 1/choices.

`build_local_task(text_path, out_dir, n=...)` writes a self-contained task directory that
`TaskManager(include_path=out_dir)` indexes:

    out_dir/<name>.yaml       the lm-eval task config (`output_type: multiple_choice`)
    out_dir/<name>.jsonl      one item a line: {"context", "choices", "label", "answer"}
    out_dir/<name>_data.py    `load()`, which reads the JSONL beside it (so the directory can move)

The package ships one such task, `minitron_cloze` (`minitron/assets/tasks/`): `SHIPPED_ITEMS`
items built from the held-out part of the demo corpus (`minitron/assets/demo/corpus/heldout.txt`,
Python 3.11 documentation, PSF license), text the demo teacher never trained on. This signature is
stable: the demo builds its own smaller task from the same text with it.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from minitron.errors import InputError

TASK_NAME = "minitron_cloze"
TASKS_DIR = Path(__file__).resolve().parents[1] / "assets" / "tasks"
SOURCE_TEXT = TASKS_DIR.parent / "demo" / "corpus" / "heldout.txt"
SHIPPED_ITEMS = 200
MIN_WORDS = 6  # a sentence needs at least this many words to be cut into context + continuation

_YAML = """\
# Built by minitron.evaluate.local_task.build_local_task from {source}; do not edit by hand.
task: {name}
custom_dataset: !function {name}_data.load
test_split: test
fewshot_split: train
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_LOADER = '''\
"""Data of the {name} lm-eval task: the JSONL file beside this module (built by minitron)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(**kwargs):
    """`custom_dataset` hook of lm-eval: a DatasetDict with a `test` and a small `train` split."""
    import datasets

    items = datasets.Dataset.from_json(str(HERE / "{name}.jsonl"))
    n_train = min({n_train}, len(items) // 4)
    return datasets.DatasetDict(
        {{"test": items.select(range(n_train, len(items))), "train": items.select(range(n_train))}}
    )
'''


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, whitespace collapsed.

    Paragraphs (separated by blank lines) are split after `.`, `!` or `?` followed by whitespace; a
    piece that does not end like a sentence (a heading, a line introducing a code block with `:`) is
    dropped, so it never glues onto the next sentence.
    """
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = re.sub(r"\s+", " ", para).strip()
        for s in re.split(r"(?<=[.!?])\s+", para):
            s = s.strip()
            if s and re.search(r"[.!?][\"')\]]*$", s):
                out.append(s)
    return out


def make_items(sentences: list[str], *, n: int | None = None, choices: int = 4, seed: int = 0) -> list[dict]:
    """Cloze items from sentences: context = first half of the words, answer = the rest.

    Distractors are the continuations of other sentences (never equal to the answer), drawn with a
    seeded generator, and the true answer's position is drawn too: the same input gives the same items.
    """
    if choices < 2:
        raise InputError(f"a multiple-choice item needs at least 2 choices, got {choices}", flag="choices")
    usable = []
    for s in dict.fromkeys(sentences):  # unique, in order
        words = s.split()
        if len(words) >= MIN_WORDS:
            cut = len(words) // 2
            usable.append((" ".join(words[:cut]), " ".join(words[cut:])))
    if len(usable) < choices:
        raise InputError(
            f"the text has {len(usable)} usable sentence(s) (>= {MIN_WORDS} words); need at least {choices}"
        )
    rng = random.Random(seed)
    order = list(range(len(usable)))
    rng.shuffle(order)
    if n is not None:
        order = order[:n]
    items = []
    for i in order:
        context, answer = usable[i]
        pool = sorted({c for j, (_, c) in enumerate(usable) if j != i and c != answer})
        if len(pool) < choices - 1:
            continue
        options = rng.sample(pool, choices - 1)
        label = rng.randrange(choices)
        options.insert(label, answer)
        items.append({"context": context, "choices": options, "label": label, "answer": answer})
    return items


def build_local_task(
    text_path: str | Path,
    out_dir: str | Path,
    n: int | None = None,
    *,
    name: str = TASK_NAME,
    choices: int = 4,
    seed: int = 0,
    n_train: int = 8,
) -> Path:
    """Write a cloze multiple-choice lm-eval task built from the sentences of `text_path` into `out_dir`.

    `n` caps the number of items (all usable sentences when None); the first `n_train` items (at most
    a quarter) form the `train` split used for few-shot examples, the rest the `test` split. Returns
    the YAML path; `TaskManager(include_path=out_dir)` then knows the task as `name`.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise InputError(f"task name {name!r} must be an identifier (letters, digits, underscores)")
    text_path = Path(text_path)
    if not text_path.is_file():
        raise InputError(f"no such text file: {text_path}")
    items = make_items(
        split_sentences(text_path.read_text(encoding="utf-8")), n=n, choices=choices, seed=seed
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.jsonl").write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    (out / f"{name}_data.py").write_text(_LOADER.format(name=name, n_train=int(n_train)))
    yaml_path = out / f"{name}.yaml"
    yaml_path.write_text(_YAML.format(name=name, source=text_path.name))
    return yaml_path


if __name__ == "__main__":  # rebuild the shipped task: python -m minitron.evaluate.local_task
    print(build_local_task(SOURCE_TEXT, TASKS_DIR / TASK_NAME, n=SHIPPED_ITEMS))
