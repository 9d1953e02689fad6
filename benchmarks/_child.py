"""One measurement: one peer, one workload case, in a fresh process.

Started by run.py as ``python _child.py '<json spec>'``; prints one JSON
line on stdout.  Imports and input construction happen before the clock
starts; pool creation, the map, consuming the results and the pool's
shutdown are inside it.  Every measurement gets a fresh process, so no peer
profits from a pool (or an import) left warm by an earlier one, and peak RSS
is the caller's own.
"""
import json
import os
import sys
import time

import _funcs


# --- inputs -----------------------------------------------------------------

def build(spec):
    """(function, items, check(results) -> error or None) for a case kind."""
    kind, n = spec["kind"], spec["n"]

    def count_check(expected_len):
        def check(res):
            got = res if isinstance(res, int) else len(res)
            if got != expected_len:
                return "expected {} results, got {}".format(expected_len, got)
            return None
        return check

    if kind in ("inc", "startup"):
        items = list(range(n))

        def check(res):
            if len(res) != n or sum(res) != n * (n + 1) // 2:
                return "wrong results (len {}, sum {})".format(len(res), sum(res))
            if list(res[:3]) != [1, 2, 3][:n]:
                return "results out of order: {}".format(list(res[:3]))
            return None
        return _funcs.inc, items, check

    if kind in ("inc_gen", "dict_gen"):
        # A generator: read in the input's thread (input_thread=True).
        if kind == "inc_gen":
            items = (i for i in range(n))
        else:
            items = ({"i": i} for i in range(n))

        def check(res):
            if len(res) != n or sum(res) != n * (n + 1) // 2:
                return "wrong results (len {}, sum {})".format(len(res), sum(res))
            return None
        return (_funcs.inc if kind == "inc_gen" else _funcs.inc_i), items, check

    if kind == "busy":
        loops = spec["loops"]
        items = [loops] * n
        want = loops * (loops - 1) // 2

        def check(res):
            if len(res) != n or any(r != want for r in res):
                return "wrong results"
            return None
        return _funcs.busy, items, check

    if kind == "sleep":
        items = list(range(n))

        def check(res):
            if list(res) != items:
                return "wrong or unordered results"
            return None
        return _funcs.sleep_1ms, items, check

    if kind in ("bytes_in", "bytes_in_gen"):
        base = _funcs.block(_funcs.LARGE)
        blobs = [i.to_bytes(8, "little") + base[8:] for i in range(n)]
        items = blobs if kind == "bytes_in" else (b for b in blobs)

        def check(res):
            if list(res) != [_funcs.LARGE] * n:
                return "wrong results"
            return None
        return _funcs.length, items, check

    if kind in ("array_in", "array_in_gen"):
        import numpy as np
        arrays = [np.full(_funcs.LARGE // 8, float(i)) for i in range(n)]
        items = arrays if kind == "array_in" else (a for a in arrays)

        def check(res):
            if [int(r) for r in res] != [_funcs.LARGE] * n:
                return "wrong results"
            return None
        return _funcs.array_nbytes, items, check

    if kind == "bytes_out":
        def check(res):
            if len(res) != n or any(len(r) != _funcs.LARGE for r in res):
                return "wrong results"
            if int.from_bytes(res[-1][:8], "little") != n - 1:
                return "results out of order"
            return None
        return _funcs.make_bytes_8mb, list(range(n)), check

    if kind == "array_out":
        def check(res):
            if len(res) != n or any(r.nbytes != _funcs.LARGE for r in res):
                return "wrong results"
            if float(res[-1][0]) != n - 1:
                return "results out of order"
            return None
        return _funcs.make_array_8mb, list(range(n)), check

    if kind == "slow_consumer":
        return _funcs.make_bytes_1mb, list(range(n)), count_check(n)

    raise SystemExit("unknown kind {!r}".format(kind))


def slow_consume(results):
    """The slow consumer of workload 6: ~1 ms per result, keeps none."""
    k = 0
    for r in results:
        k += 1
        del r
        time.sleep(0.001)
    return k


# --- peers ------------------------------------------------------------------
# Each runs `fn` over `items` with N workers, from pool creation to shutdown,
# and returns consume(<its results>).

def peer_serial(fn, items, N, cs, p, consume):
    return consume(map(fn, items))


def peer_parmapper(fn, items, N, cs, p, consume):
    import parmapper
    return consume(parmapper.parmap(fn, items, N=p.get("N", N), Nt=p.get("Nt", 1),
                                    chunksize=cs))


def peer_pool_map(fn, items, N, cs, p, consume):
    from multiprocessing import Pool
    pool = Pool(N)
    try:
        out = consume(pool.map(fn, items, chunksize=cs))
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    return out


def peer_pool_imap(fn, items, N, cs, p, consume):
    from multiprocessing import Pool
    pool = Pool(N)
    try:
        out = consume(pool.imap(fn, items, chunksize=1))
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    return out


def peer_ppe(fn, items, N, cs, p, consume):
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(N) as ex:
        return consume(ex.map(fn, items, chunksize=cs or 1))


def peer_tpe(fn, items, N, cs, p, consume):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=p["threads"]) as ex:
        return consume(ex.map(fn, items))


def peer_joblib(fn, items, N, cs, p, consume):
    from joblib import Parallel, delayed
    par = Parallel(n_jobs=N, backend="loky",
                   batch_size="auto" if cs is None else cs,
                   return_as="generator" if p.get("stream") else "list")
    return consume(par(delayed(fn)(x) for x in items))


def peer_mpire(fn, items, N, cs, p, consume):
    from mpire import WorkerPool
    with WorkerPool(n_jobs=N) as pool:
        if p.get("stream"):
            return consume(pool.imap(fn, items, chunk_size=cs))
        return consume(pool.map(fn, items, chunk_size=cs,
                                concatenate_numpy_output=False))


PEERS = {
    "serial": peer_serial,
    "parmapper": peer_parmapper,
    "pool_map": peer_pool_map,
    "pool_imap": peer_pool_imap,
    "ppe": peer_ppe,
    "tpe": peer_tpe,
    "joblib": peer_joblib,
    "mpire": peer_mpire,
}

IMPORTS = {
    "parmapper": ["parmapper"],
    "pool_map": ["multiprocessing.pool"],
    "pool_imap": ["multiprocessing.pool"],
    "ppe": ["concurrent.futures.process"],
    "tpe": ["concurrent.futures.thread"],
    "joblib": ["joblib"],
    "mpire": ["mpire"],
}


def status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    spec = json.loads(sys.argv[1])
    peer = spec["peer"]
    params = spec.get("params", {})
    import importlib
    t0 = time.perf_counter()
    for mod in IMPORTS.get(peer, []):
        importlib.import_module(mod)
    import_time = time.perf_counter() - t0
    fn, items, check = build(spec)
    consume = slow_consume if spec.get("stream") else list
    params = dict(params, stream=bool(spec.get("stream")))
    rss_start = status_kb("VmRSS")
    peak_reset = reset_peak_rss()
    if not peak_reset:
        import resource
        rss_start_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = PEERS[peer](fn, items, spec["N"], spec.get("cs"), params, consume)
    elapsed = time.perf_counter() - t0
    peak = status_kb("VmHWM")
    if peak is None:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = check(res)
    del res
    out = {"time": elapsed, "rss_start_kb": rss_start, "peak_kb": peak,
           "peak_reset": peak_reset, "import_time": import_time}
    if not peak_reset:
        out["peak_before_kb"] = rss_start_max
    if err:
        out["error"] = "wrong output: " + err
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
