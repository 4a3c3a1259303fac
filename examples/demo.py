"""Run every example's shipped model on its shipped samples (what `make demo` shows).

    python examples/demo.py
"""

from __future__ import annotations

import runpy
from pathlib import Path

HERE = Path(__file__).resolve().parent

for name in ("basicmotions", "japanesevowels", "fsdd"):
    runpy.run_path(str(HERE / name / "run.py"), run_name="__main__")
    print()
