"""Process exit codes shared by every `shelfgate` sub-command (one place, so they cannot drift apart).

0 done, 1 a failure of the run (I/O, unreachable peer), 2 bad input (the operator must change something) —
the convention argparse itself follows: it exits 2 on a usage error.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_BAD_INPUT: Final = 2

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_OK"]
