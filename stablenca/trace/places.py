"""Where an op ran: its phase, autograd node, module and the user's source line.

Forward ops name the innermost module (module hooks) and the first frame outside torch and
this package; an op that builds an autograd node stores that place in the node's metadata,
so a backward op names the forward line that created its node.
"""

from __future__ import annotations

import os
import sys

import torch

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_THIS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the trace package
_SOURCE_KEY = "stablenca.trace.source"


class Places:
    """Mixin of :class:`~stablenca.trace.tracer.Tracer`: module names and source lines."""

    def _register_root(self, root: torch.nn.Module) -> None:
        self._keepalive.append(root)
        for name, m in root.named_modules():
            self._modnames.setdefault(id(m), name if name else f"<{type(root).__name__}>")
        for name, p in root.named_parameters():
            self._paramnames.setdefault(id(p), name)

    def _pre_hook(self, module, args) -> None:
        name = self._modnames.get(id(module))
        if name is None:
            if not self._modstack:
                self._register_root(module)
                name = self._modnames.get(id(module))
            if name is None:
                name = f"<{type(module).__name__}>"
        self._modstack.append(name)

    def _post_hook(self, module, args, output) -> None:
        if self._modstack:
            self._modstack.pop()

    def _user_src(self) -> tuple[str, int] | None:
        f = sys._getframe(1)
        cache = self._internal_cache
        while f is not None:
            fn = f.f_code.co_filename
            internal = cache.get(fn)
            if internal is None:
                absfn = os.path.abspath(fn) if not fn.startswith("<") else fn
                internal = absfn.startswith(_TORCH_DIR) or absfn.startswith(_THIS_DIR) or fn.startswith("<frozen")
                cache[fn] = internal
            if not internal:
                return fn, f.f_lineno
            f = f.f_back
        return None

    def _flush_pending(self) -> None:
        outs, info = self._pending
        self._pending = None
        for o in outs:
            gf = o.grad_fn
            if gf is not None:
                md = gf.metadata
                if _SOURCE_KEY not in md:
                    md[_SOURCE_KEY] = info

    def _where(self, node) -> tuple[str, str | None, str | None, tuple | None]:
        """(phase, backward node name, module, raw source) for an op being observed now."""
        if node is not None:
            meta = None
            try:
                meta = node.metadata.get(_SOURCE_KEY)
            except Exception:
                meta = None
            src, module = meta if meta else (None, None)
            return "backward", node.name(), module, src
        module = self._modstack[-1] if self._modstack else None
        return "forward", None, module, self._user_src()
