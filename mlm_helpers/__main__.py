"""`python -m mlm_helpers ...` and the `mlm-helpers` command: see cli.py."""

import os
import sys


def run() -> None:
    # Large CPU tensors on transparent huge pages: a bert-base step allocates and frees matrices the
    # vocabulary's size, and touching their fresh 4 KiB pages cost about a tenth of a CPU step (fp32,
    # 2 cores: 2.66-2.72 s a step with it, 3.03-3.09 without; see docs/benchmarks.md). Torch reads the
    # setting once, at its first allocation, so it is set before cli imports torch; a value the user
    # set, 0 included, is kept.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from .cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
