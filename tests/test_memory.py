"""minimech.memory: the malloc knob run_with_cache turns on (see the module docstring for why)."""
import os
import subprocess
import sys

import pytest

from minimech import memory

GLIBC = memory._glibc() is not None

SCRIPT = """
import os, torch, minimech
from minimech import memory
model = minimech.GPT(minimech.GPTConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=8, d_vocab=11))
assert not memory.keeping_freed_memory()
logits, cache = model.run_with_cache(torch.zeros(1, 4, dtype=torch.long))
print(memory.keeping_freed_memory())
"""


def run(env_value):
    env = {k: v for k, v in os.environ.items() if k != "MINIMECH_KEEP_FREED_MEMORY"}
    if env_value is not None:
        env["MINIMECH_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="the knob exists only with glibc's malloc")
def test_the_first_cache_turns_it_on_unless_the_environment_says_no():
    assert run(None) == "True"
    assert run("0") == "False" and run("off") == "False"


@pytest.mark.skipif(not GLIBC, reason="the knob exists only with glibc's malloc")
def test_it_can_be_turned_off_and_on_again():
    try:
        assert memory.keep_freed_memory(False) is True and not memory.keeping_freed_memory()
        assert memory.keep_freed_memory(True) is True and memory.keeping_freed_memory()
    finally:
        memory.keep_freed_memory(True)
