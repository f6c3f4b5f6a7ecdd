"""Atomic outputs and provenance."""

from __future__ import annotations

import json
import os
import stat

import pytest

from minitron.errors import InputError
from minitron.io import atomic_output_dir, check_output_dir, model_fingerprint, write_provenance


def test_atomic_dir_appears_whole_with_normal_permissions(tmp_path):
    dest = tmp_path / "out"
    with atomic_output_dir(dest) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not dest.exists()
    assert (dest / "a.txt").read_text() == "x"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_failure_leaves_nothing_and_existing_is_refused(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(dest) as tmp:
        (tmp / "a.txt").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    dest.mkdir()
    with pytest.raises(InputError, match="--overwrite"):
        check_output_dir(dest)
    with pytest.raises(InputError, match="same as the input"):
        check_output_dir(dest, overwrite=True, inputs=[dest])
    with atomic_output_dir(dest, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("y")
    assert [p.name for p in dest.iterdir()] == ["b.txt"]


def test_provenance_and_fingerprint(tiny_model_dir, tmp_path):
    fp = model_fingerprint(tiny_model_dir)
    assert fp == model_fingerprint(tiny_model_dir) and len(fp) == 16
    doc = write_provenance(tmp_path, "inspect", {"path": tmp_path}, inputs={"model_fingerprint": fp})
    saved = json.loads((tmp_path / "minitron.json").read_text())
    assert saved == json.loads(json.dumps(doc)) and saved["inputs"]["model_fingerprint"] == fp
    assert {"minitron", "torch", "transformers"} <= set(saved["versions"])
