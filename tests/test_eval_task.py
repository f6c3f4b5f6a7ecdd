"""The shipped local multiple-choice task: its builder, and a run through lm-eval offline on a tiny model."""

from __future__ import annotations

import json
import os

import pytest

from minitron.errors import InputError
from minitron.evaluate.local_task import (
    MIN_WORDS,
    SHIPPED_ITEMS,
    SOURCE_TEXT,
    TASK_NAME,
    TASKS_DIR,
    build_local_task,
    make_items,
    split_sentences,
)


def test_split_sentences():
    assert split_sentences("One two.  Three\nfour? Five!") == ["One two.", "Three four?", "Five!"]
    # headings and lines that introduce code are dropped, not glued onto the next sentence
    text = 'A Heading\n\nIt works (really).\n\nUse it like this:\n\n    f(x)\n\nSaid "hi."'
    assert split_sentences(text) == ["It works (really).", 'Said "hi."']


def test_items_are_well_formed_and_deterministic():
    sents = split_sentences(SOURCE_TEXT.read_text())
    items = make_items(sents, choices=4, seed=3)
    assert items == make_items(sents, choices=4, seed=3)
    assert items != make_items(sents, choices=4, seed=4)
    assert len(items) == len({s for s in sents if len(s.split()) >= MIN_WORDS})  # one item per usable sentence
    labels = set()
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert it["choices"][it["label"]] == it["answer"]
        assert f"{it['context']} {it['answer']}" in sents  # the true continuation completes a real sentence
        labels.add(it["label"])
    assert labels == {0, 1, 2, 3}  # the answer's position is not constant
    assert len(make_items(sents, n=10)) == 10


def test_too_little_text_is_an_input_error(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("Only one sentence with enough words here. Tiny.")
    with pytest.raises(InputError, match="usable sentence"):
        build_local_task(p, tmp_path / "task")


def test_shipped_task_is_what_the_builder_makes(tmp_path):
    """The files in minitron/assets/tasks/ are the builder's output on the shipped text (rebuild: python -m
    minitron.evaluate.local_task)."""
    build_local_task(SOURCE_TEXT, tmp_path, n=SHIPPED_ITEMS)
    for suffix in (".yaml", ".jsonl", "_data.py"):
        shipped = (TASKS_DIR / TASK_NAME / f"{TASK_NAME}{suffix}").read_text()
        assert (tmp_path / f"{TASK_NAME}{suffix}").read_text() == shipped, suffix


def test_local_task_runs_through_lm_eval_offline(tiny_model_dir, tmp_path, monkeypatch):
    """The shipped task and a user's `dataset_path: json` task, through lm-eval's Python API, no network."""
    from minitron.evaluate.harness import resolve_tasks, run_tasks
    from minitron.models.checkpoint import load_model, load_tokenizer

    # A user's own task directory: plain `dataset_path: json` with an absolute data_files path.
    user = tmp_path / "user_tasks"
    user.mkdir()
    items = make_items(split_sentences(SOURCE_TEXT.read_text()), n=12, seed=5)
    (user / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    (user / "my_cloze.yaml").write_text(
        "task: my_cloze\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {user / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
    )
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    plan = resolve_tasks([TASK_NAME, "my_cloze"], [user])
    assert plan.local  # both found without lm-eval's built-in index
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    out = run_tasks(model, tok, plan, limit=6, batch_size=4)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    for name in (TASK_NAME, "my_cloze"):
        assert out[name]["samples"] == 6
        assert 0.0 <= out[name]["acc"] <= 1.0
        assert out[name]["acc"] * 6 == pytest.approx(round(out[name]["acc"] * 6))
    assert "acc_norm" in out[TASK_NAME] and "acc_stderr" in out[TASK_NAME]


def test_bad_include_path(tmp_path):
    """(Unknown task names are tested through the CLI: that check reads lm-eval's whole index.)"""
    from minitron.evaluate.harness import resolve_tasks

    with pytest.raises(InputError, match="--include-path: no such directory"):
        resolve_tasks([TASK_NAME], [tmp_path / "missing"])
