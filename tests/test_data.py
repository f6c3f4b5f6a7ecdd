"""Data loading: formats, packing, sample counts and bad input."""

from __future__ import annotations

import json

import pytest

from minitron.data import load_blocks, pack, read_documents, tokenize_documents
from minitron.errors import InputError
from minitron.testing import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_formats_agree(tmp_path, tok):
    docs = ["The quick brown fox.", "Hybrid models mix Mamba and attention."]
    (tmp_path / "a.txt").write_text(docs[0])
    (tmp_path / "b.txt").write_text(docs[1])
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs}), tmp_path / "d.parquet")
    assert read_documents([tmp_path / "a.txt", tmp_path / "b.txt"]) == docs
    assert read_documents([tmp_path / "c.jsonl"], text_field="body") == docs
    assert read_documents([tmp_path / "d.parquet"], text_field="body") == docs


def test_packing_joins_with_eos_and_drops_remainder(tok):
    stream = tokenize_documents(["one two", "three"], tok)
    ids_a = tok("one two", add_special_tokens=False)["input_ids"]
    assert stream[: len(ids_a)] == ids_a and stream[len(ids_a)] == tok.eos_token_id
    blocks = pack(list(range(10)), 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_samples_and_seed(tmp_path, tok):
    (tmp_path / "t.txt").write_text("word " * 400)
    all_blocks = load_blocks([tmp_path / "t.txt"], tok, seq_len=8)
    first = load_blocks([tmp_path / "t.txt"], tok, seq_len=8, samples=5)
    assert first.tolist() == all_blocks[:5].tolist()
    a = load_blocks([tmp_path / "t.txt"], tok, seq_len=8, samples=5, seed=1)
    b = load_blocks([tmp_path / "t.txt"], tok, seq_len=8, samples=5, seed=1)
    assert a.tolist() == b.tolist()
    with pytest.raises(InputError, match=r"gives \d+ block\(s\) of 8 tokens but 100000 were asked"):
        load_blocks([tmp_path / "t.txt"], tok, seq_len=8, samples=100000)


@pytest.mark.parametrize(
    ("content", "name", "needle"),
    [
        (None, "missing.txt", "no such file"),
        (b"", "empty.txt", "is empty"),
        (b"\x00\x01\x02binary", "bin.txt", "binary"),
        (b'{"text": 1}\n', "bad.jsonl", "not a string"),
        (b'{"other": "x"}\n', "nofield.jsonl", "--text-field"),
        (b"{oops\n", "broken.jsonl", "not valid JSON"),
        (b"   \n\n", "blank.txt", "no text"),
    ],
)
def test_bad_data(tmp_path, tok, content, name, needle):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=needle) as e:
        load_blocks([p], tok, seq_len=8, samples=1)
    assert "--data" in str(e.value)


def test_bad_numbers(tmp_path, tok):
    (tmp_path / "t.txt").write_text("word " * 50)
    with pytest.raises(InputError, match="--samples"):
        load_blocks([tmp_path / "t.txt"], tok, seq_len=8, samples=0)
    with pytest.raises(InputError, match="--seq-len"):
        load_blocks([tmp_path / "t.txt"], tok, seq_len=4096, samples=1, max_positions=512)
