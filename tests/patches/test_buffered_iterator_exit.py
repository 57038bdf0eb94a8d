"""Tests for ``patches/buffered_iterator_exit.py``: a process that leaves fairseq's ``BufferedIterator`` in
mid-epoch (``--max-update`` before the epoch's end) exits cleanly instead of aborting in the daemon thread."""
import os
import subprocess
import sys

# A BufferedIterator over batches that cost a few matmuls each, left after one batch: its daemon thread is
# inside PyTorch almost all the time (the buffer never fills), as fairseq's collater is at --max-update.
SCRIPT = """
import sys, torch
if sys.argv[1] == "patched":
    import fairseq_quant  # noqa: F401  (applies the patches)
from fairseq.data.iterators import BufferedIterator

class Batches:
    def __len__(self):
        return 100_000
    def __iter__(self):
        x = torch.randn(256, 256)
        for _ in range(len(self)):
            yield torch.cat([x @ x for _ in range(4)])

itr = BufferedIterator(100_000, Batches())
assert next(itr).shape == (1024, 256)
print("left the iterator")
"""


def run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_leaving_a_buffered_iterator_in_mid_epoch_exits_cleanly():
    proc = run("patched")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "left the iterator" in proc.stdout
    assert "terminate called" not in proc.stderr


def test_without_the_patch_the_process_aborts():
    """The bug as fairseq has it (Python 3.11 ends the daemon thread inside PyTorch's noexcept frames)."""
    proc = run("plain")
    assert "left the iterator" in proc.stdout
    assert proc.returncode == -6 and "terminate called without an active exception" in proc.stderr, proc.stderr
