"""``python -m edgelstm.converters.onnx_exec``: the supported-op table (markdown) on stdout.

``--details`` adds one line per refused/wrong/crashed node case on stderr.
"""

from __future__ import annotations

import sys

from edgelstm.converters.onnx_exec.node_suite import markdown_table, run_suite


def main(argv: list[str]) -> int:
    results = run_suite()
    print(markdown_table(results))  # noqa: T201
    if "--details" in argv:
        for r in results:
            if r.status != "pass":
                print(f"{r.status:8} {r.op:22} {r.name}: {r.detail}", file=sys.stderr)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
