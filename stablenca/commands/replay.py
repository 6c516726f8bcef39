"""``stablenca replay CAPSULE``: rerun a failed step under the tracer and print its chain."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("replay", help="rerun a failed step from its capsule under the tracer",
                                   description="Loads the capsule with torch.load(weights_only=True), "
                                               "restores the pre-state and reruns the step under the tracer.")
    parser.add_argument("capsule", help="a capsule.pt written by stablenca diagnose")
    parser.add_argument("--json", action="store_true", help="print the finding as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..runtime.sentinel import replay  # lazy: `stablenca --help` stays free of torch

    finding, capsule = replay(args.capsule)
    if args.json:
        print(json.dumps({"epoch": capsule["epoch"], "step": capsule["step"],
                          "finding": None if finding is None else finding.to_dict(),
                          "same_as_recorded": (finding.to_dict() if finding else None) == capsule.get("finding")},
                         allow_nan=True))
        return 0
    print(f"capsule: {capsule['config']['model']}/{capsule['config']['loss']} epoch {capsule['epoch']} "
          f"step {capsule['step']}")
    if finding is None:
        print("the replayed step is finite: nothing to explain")
        return 0
    print(str(finding))
    recorded = capsule.get("finding")
    if recorded is not None:
        same = finding.to_dict() == recorded
        print("same first bad op as recorded in the run" if same else
              "WARNING: differs from the chain recorded in the run")
    return 0
