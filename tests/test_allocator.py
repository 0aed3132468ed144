import subprocess
import sys

import pytest

CODE = "from unetr.allocator import keep_freed_memory; print(keep_freed_memory())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_takes_effect_and_can_be_turned_off():
    # in child processes: the setting is process-wide
    on = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True,
                         env={"UNETR_KEEP_HEAP": "0", "PATH": ""})
    assert on.stdout.strip() == "True"
    assert off.stdout.strip() == "False"
