"""Run one of a stage's processes with one of jobkit's performance choices undone, so that
`make bench` can measure what the choice buys, paired with the stage as it is.

    python -m devkit.variant direct-writes -m arq stage3_status_history.worker.WorkerSettings
    python -m devkit.variant no-gc-freeze -m uvicorn stage3_status_history.main:app --port 8001

The stages and jobkit keep no switch for this: the change is made here, before the stage is
imported, and only in the process started this way.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

VARIANTS = {
    "direct-writes": "the worker's ledger waits for each commit (no write-behind)",
    "no-gc-freeze": "start-up objects stay in the garbage collector's full scans",
}


def apply(name: str) -> None:
    if name == "direct-writes":
        import jobkit.db

        chosen = jobkit.db.Database.__init__

        def waits_for_commits(self: jobkit.db.Database, engine: Any, **_: Any) -> None:
            chosen(self, engine, write_behind=False)

        jobkit.db.Database.__init__ = waits_for_commits  # type: ignore[method-assign]
    elif name == "no-gc-freeze":
        import jobkit.tuning

        jobkit.tuning._frozen = True  # as if frozen already: freeze_startup_objects does nothing
    else:
        raise SystemExit(f"unknown variant {name!r}; one of {', '.join(VARIANTS)}")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "-m":
        raise SystemExit(__doc__)
    name, module, rest = argv[0], argv[2], argv[3:]
    apply(name)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
