"""Process tuning that any long-running Python server may want, and no chapter teaches.

- `freeze_startup_objects()`: call it once start-up is done. The objects made until then (the
  imported modules, SQLAlchemy's tables and compiled statements, Pydantic's validators) live
  as long as the process, yet every full garbage collection walks all of them again; in an app
  with an ORM they are most of the heap, and a full collection stalls whatever request is
  running for its duration. `gc.freeze()` moves them out of the collector's sight (they are
  still freed if the process drops them: it only stops scanning them). The docs' performance
  page has the effect on tail latency, measured by `make bench`.

A learner may skip this module: the stages with a ledger call it once, at the end of start-up.
"""

import gc

_frozen = False


def freeze_startup_objects() -> None:
    """Collect what start-up left as garbage, then exempt everything alive from future scans.

    Once per process: a server starts once, and a test run that starts app after app in one
    process should not keep freezing its tests' objects too.
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
