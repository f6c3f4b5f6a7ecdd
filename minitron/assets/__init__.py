"""Files shipped inside the package: reference configs (and, later, the demo model and corpus)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
CONFIGS = ASSETS / "configs"


def bundled_configs() -> dict[str, Path]:
    """Name -> directory of each bundled reference config (no weights)."""
    return {p.name: p for p in sorted(CONFIGS.iterdir()) if (p / "config.json").is_file()}


def resolve_model_path(path: str | Path) -> Path:
    """A path as given, or the bundled reference config of that name when no such path exists."""
    p = Path(path)
    if not p.exists() and str(path) in bundled_configs():
        return bundled_configs()[str(path)]
    return p
