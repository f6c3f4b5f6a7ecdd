"""Where a model named on the command line lives: a directory, a bundled config, or a Hugging Face hub id.

`resolve_model(spec)` is the one place every command turns `MODEL` (and `--teacher`, `--student`)
into a local directory:

1. an existing path (a model directory or a `config.json`) is used as it is;
2. a bundled name (`nemotron-nano-12b-v2-base`, `demo-teacher`, ...) is the copy inside the package;
3. `org/name` (optionally `org/name@revision`, or with `--revision`) is resolved through
   `huggingface_hub`: from the local cache when it is there or when `HF_HUB_OFFLINE=1`, by download
   otherwise. Only what the command needs is fetched: the config, the shard index and the tokenizer
   for `inspect` and `--dry-run` (`weights=False`), the safetensors shards too when weights are read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from minitron.errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Everything but the weights: enough for the architecture, the parameter count and the tokenizer.
CONFIG_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "*.md", "*.jinja"]
WEIGHT_FILES = ["*.safetensors"]


def split_revision(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`); an explicit `revision` wins over none in the spec."""
    if "@" in spec and not os.path.exists(spec):
        spec, _, rev = spec.partition("@")
        if revision is not None and revision != rev:
            raise InputError(f"{spec}@{rev} and --revision {revision} disagree", flag="--revision")
        revision = rev or revision
    return spec, revision


def is_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not os.path.exists(spec)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model(spec: str | Path, *, revision: str | None = None, weights: bool = False,
                  flag: str = "MODEL") -> Path:
    """A local path for `spec` (see the module docstring); a missing model is a one-line InputError."""
    from minitron.assets import bundled_models

    text = str(spec)
    if os.path.exists(text):
        if revision is not None:
            raise InputError(f"{text} is a local path; --revision applies to hub ids only", flag="--revision")
        return Path(text)
    if text in bundled_models():
        return bundled_models()[text]
    name, revision = split_revision(text, revision)
    if revision is not None and os.path.exists(name):
        raise InputError(f"{name} is a local path; a revision applies to hub ids only", flag="--revision")
    if not is_hub_id(name):
        known = ", ".join(bundled_models())
        raise InputError(f"no such file or directory: {text} (nor a bundled name: {known}; nor a hub id org/name)",
                         flag=flag)  # fmt: skip
    return Path(_download(name, revision, weights, flag))


def _download(repo_id: str, revision: str | None, weights: bool, flag: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = CONFIG_FILES + (WEIGHT_FILES if weights else [])
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except LocalEntryNotFoundError:
        if offline():
            raise InputError(f"{where} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
                             "downloading it (download it once online, or unset HF_HUB_OFFLINE)", flag=flag) from None
        raise InputError(f"{where} could not be downloaded (no connection to the Hugging Face hub?) and is not in "
                         "the local cache", flag=flag) from None  # fmt: skip
    except RevisionNotFoundError:
        raise InputError(f"{where}: no such revision on the Hugging Face hub", flag="--revision") from None
    except GatedRepoError:
        raise InputError(f"{repo_id} is gated: accept its license on the hub and log in (hf auth login)",
                         flag=flag) from None  # fmt: skip
    except RepositoryNotFoundError:
        raise InputError(f"{repo_id}: no such model on the Hugging Face hub (or it is private: hf auth login)",
                         flag=flag) from None  # fmt: skip


def resolve_model_path(path: str | Path, *, weights: bool = False, revision: str | None = None,
                       flag: str = "MODEL") -> Path:
    """A path as given, a bundled name, or a hub id resolved through the Hugging Face cache (`minitron.hub`)."""
    return resolve_model(path, weights=weights, revision=revision, flag=flag)
