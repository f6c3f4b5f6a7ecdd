"""Files shipped inside the package: reference configs, the demo teacher and corpus, lm-eval tasks, recipes."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
CONFIGS = ASSETS / "configs"


def bundled_configs() -> dict[str, Path]:
    """Name -> directory of each bundled reference config (no weights)."""
    return {p.name: p for p in sorted(CONFIGS.iterdir()) if (p / "config.json").is_file()}


def bundled_models() -> dict[str, Path]:
    """Name -> directory of every bundled model: the reference configs and the demo teachers (with weights)."""
    return {**bundled_configs(), "demo-teacher": ASSETS / "demo" / "teacher",
            "demo-moe-teacher": ASSETS / "demo" / "moe-teacher"}
