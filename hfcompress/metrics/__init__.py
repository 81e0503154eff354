"""Task metrics through `evaluate`.

The Hub's metric scripts are unreachable offline, so the common ones ship with hfcompress as
local `evaluate` modules; any other name goes to ``evaluate.load`` as a Hub id.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).parent
BUNDLED = tuple(sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / f"{p.name}.py").exists()))


def load_metric(name: str):
    import evaluate

    return evaluate.load(str(BUNDLED_DIR / name) if name in BUNDLED else name)
