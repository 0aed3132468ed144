"""``python -m unetr`` at a slower pace: each file the command finishes (the atomic write's rename) is followed by
a pause of ``UNETR_TEST_PACE_S`` seconds (default 0.5).

tests/test_kill.py starts the commands it kills through this file. Without the pause, a loaded machine may
finish the whole job between the moment the test sees its kill point and the moment the signal lands (CI
once saw all six cases preprocessed by then), and the rerun would have nothing left to do. The command, its
signal handling and its writes are the real ones; only the time between two finished files grows.
"""

import os
import sys
import time

PACE_S = float(os.environ.get("UNETR_TEST_PACE_S", "0.5"))
_replace = os.replace


def _paced_replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    time.sleep(PACE_S)


os.replace = _paced_replace  # looked up at call time by unetr.fsutil.atomic_write; forked workers inherit it

if __name__ == "__main__":
    from unetr.cli import main

    sys.exit(main(sys.argv[1:]))
