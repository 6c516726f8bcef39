"""Forking a process that has run torch: the child must not collect what it inherits.

>>> with frozen_heap():
...     pass
>>> import gc; gc.get_freeze_count()
0
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Fork inside this block: the children's collectors never walk the objects they inherit.

    Two reasons. Inherited garbage whose destructor needs the parent's threads must not be
    finalised in a child, where those threads do not exist: a ``DistributedDataParallel`` reducer
    left in a reference cycle (its gloo process group wakes and joins gloo's worker threads when
    destroyed) hung a forked figure worker for good. And a full collection in a child would walk
    the ~400,000 objects of torch, sklearn and matplotlib (~0.25 s each time, and a copy of every
    page it touches). The parent unfreezes on leaving; a process that froze its heap itself is
    left as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
