"""`minitron demo`: bad options fail in one line before anything is written; the full run keeps its JSON contract."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from minitron.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--steps", "0"], "--steps"), (["--budget-fraction", "1.5"], "--budget-fraction"),
     (["--budget-fraction", "0.01"], "--budget-fraction")],
)
def test_bad_options_exit_2_and_write_nothing(tmp_path, args, flag):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    assert flag in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_existing_output_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["demo", "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_an_earlier_demo_output_is_replaced_but_nothing_else(tmp_path):
    from minitron.cli.demo_cmd import made_by_demo

    out = tmp_path / "demo"
    out.mkdir()
    assert not made_by_demo(out)
    (out / "minitron.json").write_text('{"command": "prune"}')
    assert not made_by_demo(out)
    (out / "minitron.json").write_text('{"command": "demo"}')
    assert made_by_demo(out)
    (out / "minitron.json").write_text("not json")
    assert not made_by_demo(out)


# The end-to-end run of the demo is tests/test_readme.py: the README's first command, as written.
