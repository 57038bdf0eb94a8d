"""fairseq-train can abort at exit, after its last checkpoint is saved: ``terminate called without an active
exception`` (SIGABRT, exit status 134 or -6).

The bug: ``fairseq.data.iterators.BufferedIterator`` preloads batches (``--data-buffer-size``, default 10) in a
*daemon* ``BackgroundConsumer`` thread. When training stops before that thread has read the whole epoch
(``--max-update`` in mid-epoch), the thread is still collating batches while the interpreter finalises. Python
3.11 ends a daemon thread that wants the GIL back after finalisation began with ``pthread_exit``; the forced
unwind runs through PyTorch's ``noexcept`` C++ frames (a ``torch.cat`` in the collater releases the GIL) and
``std::terminate`` kills the whole process. It depends on timing: seen twice in this project's CI (2 workers on
2 cores), never in the same test run alone.

The fix: an ``atexit`` handler (it runs after the non-daemon threads have been joined and before finalisation)
tells each live ``BackgroundConsumer`` to stop after the batch it is making (the thread checks its
``_max_len`` after every batch it queues) and empties its queue until the thread has ended, so no daemon
thread is inside PyTorch when the interpreter goes away. Nothing is lost: the process is exiting and the
preloaded batches would be dropped anyway.
"""
import atexit
import queue
import threading

from fairseq.data import iterators

__all__ = ["apply", "stop_background_consumers"]

_STOP_TIMEOUT_S = 60.0  # per thread, to finish the batch in hand; past it the thread is left as fairseq leaves it


def stop_background_consumers(timeout: float = _STOP_TIMEOUT_S) -> int:
    """Stop every live ``BackgroundConsumer`` thread; returns how many were stopped."""
    consumers = [t for t in threading.enumerate() if isinstance(t, iterators.BackgroundConsumer) and t.is_alive()]
    for consumer in consumers:
        consumer._max_len = 0  # its loop breaks once ``count >= _max_len``, after the batch in hand
        for _ in range(int(timeout / 0.05)):
            try:  # room in the queue, so the thread's put() (the batch, then the end sentinel) returns
                while True:
                    consumer._queue.get_nowait()
            except queue.Empty:
                pass
            consumer.join(0.05)
            if not consumer.is_alive():
                break
    return len(consumers)


def apply() -> None:
    """Register the exit handler (idempotent)."""
    if not getattr(iterators, "_stops_background_consumers_at_exit", False):
        atexit.register(stop_background_consumers)
        iterators._stops_background_consumers_at_exit = True
