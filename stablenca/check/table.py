"""The check's result: one row per formulation × dtype, as a table for people and as JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import losses
from .batches import POPULATION_HELP
from .contract import Contract, Violation
from .measure import THRESHOLD, CheckRow


@dataclasses.dataclass
class CheckReport:
    sweep: dict[str, Any]
    rows: list[CheckRow]
    seconds: float
    contract: Contract | None = None
    violations: list[Violation] = dataclasses.field(default_factory=list)
    unjudged: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def row(self, loss: str, dtype: str) -> CheckRow:
        for row in self.rows:
            if row.loss == loss and row.dtype == dtype:
                return row
        raise KeyError((loss, dtype))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command": "check",
            "sweep": self.sweep,
            "populations": POPULATION_HELP,
            "results": [r.to_dict() for r in self.rows],
            "seconds": round(self.seconds, 2),
            "contract": None,
        }
        if self.contract is not None:
            out["contract"] = {"path": self.contract.path, "ok": self.ok,
                               "violations": [dataclasses.asdict(v) for v in self.violations],
                               "not_in_contract": self.unjudged}
        return out

    def format_table(self) -> str:
        s = self.sweep
        # The loss column fits the longest name: two user losses must not read alike.
        names = {r.loss: _short_loss_name(r.loss) for r in self.rows}
        width = max([14, *(len(name) + 1 for name in names.values())])
        pad = " " * (width - 14)
        lines = [
            f"stablenca check: {s['n_scales']} scales {s['scale_min']:.0e}..{s['scale_max']:.0e} "
            f"({s['points_per_decade']}/decade), {s['batches']} batches per scale and population, seed {s['seed']}; "
            f"rows {s['rows'][0]}-{s['rows'][1]}, {s['classes'][0]}-{s['classes'][1]} classes; "
            f"nearest same/other distance of every row in [s, {s['kappa']}s]",
            f"breakdown: smallest scale where a batch in which every class has >= 2 members gives a non-finite "
            f"loss/gradient or more than {THRESHOLD:g} of the significand bits wrong "
            f"(bits = log2(1 + ulps), med/max over the sweep)",
            "",
            f"{pad}{'':<72}{'every class has >= 2 members (a)':<41}| {'a singleton class (b)'}",
            f"{'loss':<{width}}{'dtype':<10}{'reference':<20}{'breakdown scale (a)':<28}{'finite':>7} "
            f"{'loss bits':^11} {'grad bits':^11} {'vanished':>8} | {'finite':>6} {'loss bits':^11} "
            f"{'grad bits':^11}",
            f"{pad}{'':<79} {'med / max':^11} {'med / max':^11} {'':>8} | {'':>6} {'med / max':^11} {'med / max':^11}",
        ]
        lines = [line.rstrip() for line in lines]

        def bits(median, maximum):
            if median is None:
                return f"{'-':^11}"
            return f"{median:>5.1f}/{maximum:<5.1f}"

        for r in self.rows:
            a, b = r.populations["paired"], r.populations["singleton"]
            breakdown = "none" if r.breakdown_scale is None else f"{r.breakdown_scale:.3g} {r.breakdown_reason}"
            if len(breakdown) > 27:
                breakdown = breakdown[:26] + "~"
            lines.append(
                f"{names[r.loss]:<{width}}{r.dtype:<10}{r.reference[:19]:<20}{breakdown:<28}{a.finite_fraction:>7.2f} "
                f"{bits(a.loss_bits_median, a.loss_bits_max)} {bits(a.grad_bits_median, a.grad_bits_max)} "
                f"{a.vanished_fraction:>8.2f} | {b.finite_fraction:>6.2f} {bits(b.loss_bits_median, b.loss_bits_max)} "
                f"{bits(b.grad_bits_median, b.grad_bits_max)}".rstrip())
        lines.append(f"({self.seconds:.1f}s)")
        if self.contract is not None:
            lines.append("")
            if self.ok:
                lines.append(f"contract {self.contract.path}: OK")
            else:
                lines.append(f"contract {self.contract.path}: {len(self.violations)} violation(s)")
                for v in self.violations:
                    lines.append(f"  - {v.loss} x {v.dtype}: {v.message}")
            for item in self.unjudged:
                lines.append(f"  (not in the contract, measured only: {item})")
        return "\n".join(lines)


def _short_loss_name(spec: str) -> str:
    """The table's name of a loss: a file or module spec shows as ``stem:function``, whole.

    >>> _short_loss_name("mypkg.losses:my_loss_a"), _short_loss_name("ratio")
    ('losses:my_loss_a', 'ratio')
    """
    if losses.is_user_spec(spec):
        module, _, function = spec.rpartition(":")
        spec = f"{module.replace(chr(92), '/').rsplit('/', 1)[-1].removesuffix('.py').rsplit('.', 1)[-1]}:{function}"
    return spec
