"""Where the stage packages are: `stage<N>_<idea>/` folders at the repository root."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STAGES: dict[int, str] = {
    int(match[1]): path.name
    for path in sorted(ROOT.glob("stage*_*"))
    if (path / "main.py").exists() and (match := re.match(r"stage(\d+)_", path.name))
}


def newest_stage() -> int:
    return max(STAGES)


def stage_package(stage: int) -> str:
    return STAGES[stage]
