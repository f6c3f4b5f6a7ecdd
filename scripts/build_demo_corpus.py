"""Build the bundled demo corpus: plain English text from the Python 3.11 documentation (PSF license).

Source: Debian's `python3.11-doc` package, whose `html/_sources/**/*.rst.txt` files are the reST
sources of the documentation. Each source file is one document; this script turns its reST into
plain prose paragraphs (markup roles unwrapped, code/literal blocks, doctests, tables, directives'
arguments and index entries dropped), drops paragraphs seen before (exact duplicates after
whitespace normalisation), and writes whole documents to a train part and a held-out part:

    minitron/assets/demo/corpus/train.txt     one paragraph a line-block, paragraphs and documents
    minitron/assets/demo/corpus/heldout.txt   separated by blank lines (every --heldout-every'th
                                              document, by sorted path, is held out)
    minitron/assets/demo/corpus/LICENSE       the package's copyright file (PSF license text)

Run (after `apt-get install -y python3.11-doc`):

    python scripts/build_demo_corpus.py
    python scripts/build_demo_corpus.py --src /usr/share/doc/python3.11/html/_sources --max-train-mb 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = Path("/usr/share/doc/python3.11/html/_sources")
DEFAULT_COPYRIGHT = Path("/usr/share/doc/python3.11-doc/copyright")
DEFAULT_OUT = REPO / "minitron" / "assets" / "demo" / "corpus"
DOC_SEP = "\n\n"  # documents and paragraphs are both separated by blank lines; a document starts with its title

# Directives whose argument is prose worth keeping as a paragraph of its own (e.g. a section-like title).
_PROSE_ARG_DIRECTIVES = {"rubric", "topic", "admonition"}
# Directives whose whole body is code, data or navigation: dropped with their indented body.
_DROP_BODY_DIRECTIVES = {
    "code-block", "sourcecode", "code", "literalinclude", "toctree", "image", "figure", "productionlist",
    "testsetup", "testcleanup", "testcode", "testoutput", "doctest", "csv-table", "list-table", "table",
    "raw", "include", "index", "only", "audit-event-table", "availability", "highlight", "sectionauthor",
    "moduleauthor", "opcode", "cmdoption", "option", "envvar", "c:macro", "c:var", "c:type", "math",
    "limited-api-list", "miscnews", "pep", "describe", "currentmodule", "default-role", "tabularcolumns",
    "audit-event", "impl-detail",
}

# Directives whose body may start right after the directive line.
_ADMONITIONS = {
    "note", "warning", "seealso", "versionadded", "versionchanged", "deprecated", "deprecated-removed",
    "important", "tip", "hint", "caution", "attention", "danger", "error", "glossary", "centered", "hlist",
    "container", "epigraph", "rst-class", "admonition", "topic", "rubric",
}

_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+.:_!<>])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:\-]+)::\s*(.*)$")
_BULLET = re.compile(r"^(?:[*\-+•]|#\.|\d+\.|\(?[a-zA-Z0-9]\)|[ivx]+\.)\s+")
_FIELD = re.compile(r"^:([^:]+):\s*(.*)$")


def _inline(text: str) -> str:
    """Unwrap reST inline markup into plain text."""
    # :role:`title <target>` -> title ; :role:`~a.b.c` -> c ; :role:`!x` -> x ; :role:`x` -> x
    def role(m: re.Match) -> str:
        body = m.group(1)
        t = re.match(r"^(.*?)\s*<[^<>]*>$", body, re.S)
        if t and t.group(1):
            return t.group(1)
        body = body.lstrip("!")
        if body.startswith("~"):
            body = body[1:].split(".")[-1]
        return body

    text = re.sub(r":[\w:\-]+:`([^`]+)`", role, text)
    text = re.sub(r"``(.+?)``", r"\1", text)  # inline literal
    text = re.sub(r"`([^`<]+?)\s*<[^`>]+>`__?", r"\1", text)  # `text <url>`_
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)  # `interpreted` or `ref`_
    text = re.sub(r"\[(?:#\w*|\d+|\*)\]_", "", text)  # footnote references
    text = re.sub(r"\|(\w[\w\s\-]*)\|_?", r"\1", text)  # substitutions
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\1", text)
    text = re.sub(r"\b(\w+)_\b(?=[\s.,;:)]|$)", r"\1", text)  # hyperlink reference word_
    text = text.replace("\\ ", "").replace("\\", "")
    return re.sub(r"\s+", " ", text).strip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _skip_indented(lines: list[str], i: int, base: int) -> int:
    """Index of the first line after the block indented deeper than `base` that starts at `i`."""
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
        i += 1
    return i


def rst_to_paragraphs(source: str) -> list[str]:
    """Plain-text prose paragraphs of one reST document, in order."""
    lines = source.expandtabs(8).splitlines()
    paras: list[str] = []
    buf: list[str] = []
    literal_next = False  # the paragraph being collected ends with '::' -> its indented follow-up is code
    bullet = False  # the paragraph being collected is a list item (its continuation lines are indented)

    def flush() -> None:
        nonlocal literal_next
        if not buf:
            return
        text = " ".join(s.strip() for s in buf)
        buf.clear()
        if text.endswith("::"):
            literal_next = True
            text = text[:-2].rstrip()
            text = text + ":" if text and text[-1].isalnum() else text
        if text:
            paras.append(text)

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        ind = _indent(line)
        if not stripped:
            flush()
            i += 1
            continue
        if literal_next and not buf:
            # An indented block after '::' is a literal (code) block: drop it.
            literal_next = False
            prev_ind = 0
            i_back = i - 1
            while i_back >= 0 and not lines[i_back].strip():
                i_back -= 1
            if i_back >= 0:
                prev_ind = _indent(lines[i_back])
            if ind > prev_ind:
                i = _skip_indented(lines, i, prev_ind)
                continue
        literal_next = False
        if _ADORNMENT.match(stripped) and not buf:
            i += 1  # overline or a stray transition
            continue
        if _ADORNMENT.match(stripped) and buf:
            # `buf` was a section title: keep it as its own paragraph.
            flush()
            i += 1
            continue
        m = _DIRECTIVE.match(stripped)
        if m:
            flush()
            name, arg = m.group(1).lower(), m.group(2)
            if name in _DROP_BODY_DIRECTIVES or name.startswith(("c:", "productionlist")):
                i = _skip_indented(lines, i + 1, ind)
                continue
            if name in _PROSE_ARG_DIRECTIVES and arg:
                paras.append(arg.strip())
            # Other directives keep their body as prose. Admonitions (note, seealso, versionchanged, ...)
            # may start the body on the next line: drop the directive line and its :option: lines.
            # Descriptions (function, method, class, ...) may continue the signature on the following
            # lines: drop everything up to the blank line that starts the body.
            i += 1
            if name in _ADMONITIONS:
                while i < len(lines) and lines[i].strip().startswith(":") and _FIELD.match(lines[i].strip()):
                    i += 1
            else:
                while i < len(lines) and lines[i].strip():
                    i += 1
            continue
        if stripped.startswith(".."):
            # Comment, label (.. _name:), substitution or footnote definition: drop with its body.
            flush()
            i = _skip_indented(lines, i + 1, ind)
            continue
        if stripped.startswith(">>>") and not buf:
            # A doctest block runs to the next blank line: drop it.
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        if stripped.startswith(("+-", "+=", "|")) or re.match(r"^=+(\s+=+)+$", stripped):
            flush()
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        if _BULLET.match(stripped):
            flush()
            stripped = _BULLET.sub("", stripped)
            bullet = True
        elif _FIELD.match(stripped) and not buf:
            # Field list (:param x: ...): keep the description.
            flush()
            stripped = _FIELD.match(stripped).group(2)
        elif buf and len(buf) == 1 and not bullet and ind > _indent(lines[i - 1]):
            # A definition list body (term line followed by a deeper-indented definition).
            flush()
        if not buf and not _BULLET.match(line.strip()):
            bullet = False
        buf.append(stripped)
        i += 1
    flush()
    out = []
    for p in paras:
        t = _inline(p)
        if _is_prose(t):
            out.append(t)
    return out


def _is_prose(text: str) -> bool:
    """Keep paragraphs that read as English: enough letters and words, not mostly symbols."""
    if len(text) < 3:
        return False
    letters = sum(c.isalpha() or c == " " for c in text)
    if letters / len(text) < 0.7:
        return False
    return len(text.split()) >= 2 or text[:1].isupper()


def _norm(p: str) -> str:
    return re.sub(r"\s+", " ", p).strip().lower()


def build(src: Path, heldout_every: int, max_train_bytes: int | None) -> tuple[list[str], list[str], dict]:
    files = sorted(src.rglob("*.rst.txt"))
    if not files:
        raise SystemExit(f"no *.rst.txt under {src}; install python3.11-doc or pass --src")
    seen: set[str] = set()
    train, heldout = [], []
    n_paras = n_dupes = 0
    for k, f in enumerate(files):
        paras = []
        for p in rst_to_paragraphs(f.read_text("utf-8", errors="replace")):
            h = hashlib.sha1(_norm(p).encode()).hexdigest()
            n_paras += 1
            if h in seen:
                n_dupes += 1
                continue
            seen.add(h)
            paras.append(p)
        if sum(len(p.split()) for p in paras) < 20:
            continue
        doc = "\n\n".join(paras)
        (heldout if k % heldout_every == heldout_every // 2 else train).append(doc)
    total_train = sum(len(d.encode()) for d in train)
    if max_train_bytes is not None and total_train > max_train_bytes:
        # Keep whole documents drawn in a fixed pseudo-random order (spread over the whole
        # documentation) until the cap, then restore the original order.
        ranked = sorted(range(len(train)), key=lambda j: hashlib.sha1(f"{j}".encode()).hexdigest())
        keep, size = set(), 0
        for j in ranked:
            n = len(train[j].encode()) + 2
            if size + n <= max_train_bytes:
                keep.add(j)
                size += n
        train = [d for j, d in enumerate(train) if j in keep]
    stats = {
        "source_files": len(files),
        "paragraphs": n_paras,
        "duplicate_paragraphs_dropped": n_dupes,
        "train_documents": len(train),
        "heldout_documents": len(heldout),
        "train_bytes": sum(len(d.encode()) + 2 for d in train),
        "heldout_bytes": sum(len(d.encode()) + 2 for d in heldout),
        "cleaned_train_bytes_before_cap": total_train,
    }
    return train, heldout, stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="directory of the *.rst.txt sources")
    ap.add_argument("--copyright", type=Path, default=DEFAULT_COPYRIGHT, help="Debian copyright file (license)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--heldout-every", type=int, default=20, help="every n-th document goes to heldout.txt")
    ap.add_argument("--max-train-mb", type=float, default=4.0, help="cap train.txt at this many MB (whole documents)")
    args = ap.parse_args(argv)
    cap = int(args.max_train_mb * 1e6) if args.max_train_mb else None
    train, heldout, stats = build(args.src, args.heldout_every, cap)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.txt").write_text(DOC_SEP.join(train) + "\n", "utf-8")
    (args.out / "heldout.txt").write_text(DOC_SEP.join(heldout) + "\n", "utf-8")
    lic = args.copyright.read_text("utf-8")
    header = ("The texts in train.txt and heldout.txt are derived from the Python 3.11 documentation\n"
              "(reST sources in Debian's python3.11-doc package), Copyright (c) 2001-2023 Python Software\n"
              "Foundation, distributed under the PSF License Agreement reproduced below.\n"
              "What follows is the package's copyright file, unchanged.\n\n")
    (args.out / "LICENSE").write_text(header + lic, "utf-8")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
