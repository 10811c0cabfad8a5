"""The engines' thread pool: frame blocks on a fixed number of threads, with results independent of timing.

The compiled kernels (:mod:`ptycli.engines.fused`, :mod:`~ptycli.engines.fused_ml`,
:mod:`~ptycli.engines.fused_pie`) are serial and release the GIL. Engines run
frame blocks on several threads at once (:class:`BlockPool`), each thread with
its own scratch buffers and single-threaded FFTs: one synchronisation per pass
instead of one per kernel call. Sums over blocks go to accumulators that
belong to the blocks, not to the threads: :meth:`BlockPool.map_slots` gives
each block a slot (two per thread; one for large objects,
:func:`slots_per_thread`), runs a slot's blocks one at a time in a fixed
order on whichever thread is free, and the slots are added in a fixed
order after the pass. On a shared machine, where one core often runs slower
than the other, the threads still finish together, and the results do not
depend on timing. Object-sized steps (the object denominator, the division,
folding the slots) run in row bands, one per thread (:meth:`BlockPool.rows`).

The number of threads is the FFT workers of the process
(:func:`ptycli.core.fft.get_workers`).
"""

import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

__all__ = ["BlockPool", "slots_per_thread", "LARGE_SLOT_BYTES"]


#: Accumulator slots larger than this (bytes; each an object-sized array) come one per thread instead of two
#: (:func:`slots_per_thread`). Two per thread let a thread that runs ahead take over blocks of the other's
#: second slot; the extra slots cost their memory, their read-modify-writes and their fold. Beyond the
#: last-level cache they cost more than the balancing saves (DM, 1000 x 256^2, 40 MiB a slot: CPU-time ratio
#: to the FFT floor, median of four paired rounds, 1.83 against 2.06). At 400 x 128^2 (4.6 MB a slot) one
#: per thread was no slower (DM 1.96-2.14 against 1.98-2.22, RAAR 1.96-2.06 against 2.08-2.11, three paired
#: rounds, 2026-12-05) and 9 MB smaller at its peak.
LARGE_SLOT_BYTES = 2 * 2 ** 20


def slots_per_thread(slot_bytes):
    """Accumulator slots per thread for slots of ``slot_bytes`` bytes: 2, or 1 above :data:`LARGE_SLOT_BYTES`."""
    return 1 if slot_bytes > LARGE_SLOT_BYTES else 2


class BlockPool:
    """Run a function over work items on a fixed number of threads, items dealt round-robin.

    Thread ``k`` gets items ``k, k + T, k + 2T ...`` in that order, always
    (so per-thread accumulators see the same items in the same order on
    every run). With one thread the items run in the calling thread.

    Parameters
    ----------
    n_threads : int
        Threads (the FFT workers of the process, :func:`ptycli.core.fft.get_workers`).
    """

    def __init__(self, n_threads, slots_per_thread=2):
        self.n = max(1, int(n_threads))
        #: accumulator slots of :meth:`map_slots`
        self.slots = 1 if self.n == 1 else self.n * max(1, int(slots_per_thread))
        self._band_cache = {}
        self._pool = ThreadPoolExecutor(self.n) if self.n > 1 else None

    def map_slots(self, fn, items, reverse=False):
        """``[fn(k, s, item) for each item]`` in item order, load-balanced but reproducible.

        Item ``i`` belongs to accumulator slot ``s = i % self.slots``; the
        items of a slot run one at a time and in order (last to first with
        ``reverse``), each on whichever thread ``k`` is free, a free thread
        taking the next item of the free slot with the most items left. So an
        accumulator per slot sees the same items in the same order on every
        run, whatever the timing, while a thread that runs ahead (a busy
        neighbour on a shared machine slows the other) takes over work of
        the slots it reaches, and the threads finish close together.
        """
        items = list(items)
        S = self.slots
        queues = [list(range(s, len(items), S)) for s in range(S)]
        if reverse:
            queues = [q[::-1] for q in queues]
        out = [None] * len(items)
        if self._pool is None:
            for q in queues:
                for s_i in q:
                    out[s_i] = fn(0, s_i % S, items[s_i])
            return out
        lock = threading.Lock()
        busy = [False] * S
        pos = [0] * S

        def worker(k):
            while True:
                with lock:
                    free = [s for s in range(S) if not busy[s] and pos[s] < len(queues[s])]
                    if not free:  # what is left belongs to slots another thread holds
                        return
                    s = max(free, key=lambda t: len(queues[t]) - pos[t])
                    i = queues[s][pos[s]]
                    pos[s] += 1
                    busy[s] = True
                try:
                    out[i] = fn(k, s, items[i])
                finally:
                    with lock:
                        busy[s] = False

        for f in [self._pool.submit(worker, k) for k in range(self.n)]:
            f.result()
        return out

    def map(self, fn, items, reverse=False):
        """``[fn(k, item) for each item]`` (``k``: the thread index; 0 is the calling thread), in item order.

        With ``reverse``, each thread runs its items (the same ones) last to
        first. A pass over the exit waves that follows a forward pass then
        starts with the blocks the previous pass left in the cache, and ends
        with those the next forward pass starts with.
        """
        items = list(items)
        T = self.n

        def part(k):
            mine = items[k::T]
            if reverse:
                return [fn(k, it) for it in mine[::-1]][::-1]
            return [fn(k, it) for it in mine]

        if self._pool is None:
            return part(0)
        # thread 0's items on the calling thread (it would wait anyway): one hand-off fewer per call
        futures = [self._pool.submit(part, k) for k in range(1, T)]
        try:
            first = part(0)
        except BaseException:
            wait(futures)  # the other threads finish before the error leaves
            raise
        parts = [first] + [f.result() for f in futures]
        out = [None] * len(items)
        for k in range(T):
            out[k::T] = parts[k]
        return out

    def rows(self, fn, arrays):
        """Run ``fn(k, sl)`` over row slices ``sl`` (along axis -2) of object-sized arrays, one per thread.

        For elementwise numpy work on whole storages (numpy releases the GIL):
        each thread gets a contiguous band of rows of every array in
        ``arrays`` (dicts or lists of arrays, all banded alike per array).
        """
        T = self.n
        if T == 1:
            return [fn(0, slice(None))]
        n = max(a.shape[-2] for a in arrays) if arrays else 0
        return self.map(lambda k, band: fn(k, band), self._bands(n))

    def _bands(self, n):
        """``T`` row slices splitting ``n`` rows (cached per ``n``)."""
        bands = self._band_cache.get(n)
        if bands is None:
            edges = np.linspace(0, n, self.n + 1).round().astype(int)
            bands = self._band_cache[n] = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        return bands

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
