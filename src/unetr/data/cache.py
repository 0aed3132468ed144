"""The on-disk store of preprocessed cases.

Layout of a cache folder::

    cache.json               the plan the cache was built for (and the format version)
    <id>_image.npy           (C, X, Y, Z) float32, read memory-mapped
    <id>_label.npy           (X, Y, Z) uint8
    <id>.json                the case record: preprocessing record (PreprocessRecord.to_dict), source-file
                             stamps, class voxel counts

Each array is written under a temporary name and renamed; the case's JSON is written last, so a case is
complete exactly when its JSON exists. An interrupted build therefore leaves no half case (leftover
temporary files are removed) and the next build resumes with the cases that have no JSON. A case is
rebuilt when the plan differs from the one in ``cache.json`` (then the whole cache is cleared) or when a
source file changed (size, or modification time together with a content hash of its head and tail).

Worker processes die with the process that started them, however it ends (``kill -9`` included), and
Ctrl-C or SIGTERM stops them at once. A case whose label values fall outside the plan's classes stops the
build (:func:`unetr.data.preprocess.preprocess_case` checks them; training would refuse them); a case that does
not fit in memory is reported and the others go on.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from unetr.config import Plan, load_json, save_json
from unetr.data.cases import Case, Dataset
from unetr.data.io import PathLike
from unetr.errors import DataError, UnetrError, out_of_memory
from unetr.fsutil import atomic_write, remove_stale_temporaries
from unetr.workers import die_with_parent

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_HASH_BYTES = 1 << 16


def plan_hash(plan: Plan) -> str:
    """A short digest of a plan's fields (what decides the arrays)."""
    import json

    return hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def file_stamp(path: PathLike, with_hash: bool = True) -> dict:
    """Size, modification time and a hash of the first and last 64 KiB of a file."""
    p = Path(path)
    st = p.stat()
    stamp = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        h = hashlib.blake2b(digest_size=16)
        with open(p, "rb") as f:
            h.update(f.read(_HASH_BYTES))
            if st.st_size > 2 * _HASH_BYTES:
                f.seek(-_HASH_BYTES, os.SEEK_END)
            h.update(f.read(_HASH_BYTES))
        stamp["hash"] = h.hexdigest()
    return stamp


def _source_changed(stamp: dict) -> bool:
    p = Path(stamp["path"])
    if not p.is_file():
        return True
    st = p.stat()
    if st.st_size != stamp["size"]:
        return True
    if st.st_mtime_ns == stamp["mtime_ns"]:
        return False
    return file_stamp(p)["hash"] != stamp.get("hash")  # touched: compare contents


def _paths(cache_dir: Path, case_id: str) -> Tuple[Path, Path, Path]:
    return cache_dir / f"{case_id}_image.npy", cache_dir / f"{case_id}_label.npy", cache_dir / f"{case_id}.json"


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array)))


def case_is_fresh(cache_dir: PathLike, case: Case, plan: Plan) -> bool:
    """True when the cache holds ``case`` built with ``plan`` from unchanged source files."""
    image_p, label_p, json_p = _paths(Path(cache_dir), case.id)
    if not json_p.is_file() or not image_p.is_file():
        return False
    try:
        meta = load_json(json_p)
    except (ValueError, FileNotFoundError):
        return False
    if meta.get("plan_hash") != plan_hash(plan) or meta.get("cache_version") != CACHE_VERSION:
        return False
    sources = list(case.images) + ([case.label] if case.label else [])
    if [s["path"] for s in meta.get("sources", [])] != [str(Path(s)) for s in sources]:
        return False
    if case.label and not label_p.is_file():
        return False
    return not any(_source_changed(s) for s in meta["sources"])


def _build_one(case: Case, plan_dict: dict, cache_dir: str) -> str:
    """Preprocess one case into the cache (runs in a worker process)."""
    from unetr.data.preprocess import preprocess_files

    plan = Plan.from_dict(plan_dict)
    cdir = Path(cache_dir)
    image_p, label_p, json_p = _paths(cdir, case.id)
    json_p.unlink(missing_ok=True)  # the case is incomplete until its JSON is back
    sources = [file_stamp(p) for p in list(case.images) + ([case.label] if case.label else [])]
    image, label, record = preprocess_files(case.images, plan, case.label)
    _save_npy(image_p, image)
    counts = {}
    if label is not None:
        _save_npy(label_p, label)
        values, n = np.unique(label, return_counts=True)
        counts = {str(int(v)): int(k) for v, k in zip(values, n)}
    else:
        label_p.unlink(missing_ok=True)
    meta = {
        "id": case.id, "cache_version": CACHE_VERSION, "plan_hash": plan_hash(plan), "sources": sources,
        "class_voxels": counts, **record.to_dict(),
    }
    save_json(json_p, meta)
    return case.id


def _worker_init(threads: int, parent: int) -> None:
    """A worker process: dies with its parent (however the parent ends), leaves SIGINT and SIGTERM to the parent
    (which stops the workers itself), and uses ``threads`` torch threads."""
    import signal

    import torch

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(max(1, threads))


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and kill the workers now (an interrupted build does not wait for the cases
    in progress; their temporary files are removed by the next build)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.kill()
    for proc in processes:
        proc.join(timeout=10)


def _memory_failure(case: Case, e: BaseException) -> Optional[str]:
    """How ``case`` ran out of memory, for the report; None when ``e`` is another failure."""
    needed = out_of_memory(e)
    if needed is None:
        return None
    size = f"an allocation of {needed} failed" if needed else "out of memory"
    return f"{case.id} ({case.images[0]}): {size}"


def build_cache(
    dataset_or_cases: Union[Dataset, Sequence[Case]], plan: Plan, cache_dir: PathLike, workers: int = 2,
    progress: bool = True,
) -> List[str]:
    """Preprocess cases into ``cache_dir`` once; fresh cases are kept, stale or missing ones (re)built.

    Args:
        dataset_or_cases: a :class:`Dataset` (its labelled training and validation cases) or cases.
        plan: the plan to preprocess with; a cache built for another plan is cleared first.
        workers: worker processes (0 or 1: in this process).

    Returns:
        The case ids, in input order.
    """
    from tqdm import tqdm

    cases = list(dataset_or_cases.labelled) if isinstance(dataset_or_cases, Dataset) else list(dataset_or_cases)
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise DataError(f"duplicate case ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    cdir = Path(cache_dir)
    cdir.mkdir(parents=True, exist_ok=True)
    for tmp in remove_stale_temporaries(cdir, legacy=True):  # leftovers of an interrupted build
        log.info("removed %s, left by an interrupted build", tmp)
    head = cdir / "cache.json"
    want = {"cache_version": CACHE_VERSION, "plan_hash": plan_hash(plan), "plan": plan.to_dict()}
    have: dict = {}
    if head.is_file():
        try:
            have = load_json(head)
        except ValueError:
            pass
        have = have if isinstance(have, dict) else {}
        if have.get("plan_hash") != want["plan_hash"] or have.get("cache_version") != CACHE_VERSION:
            log.warning("%s: built for another plan; clearing it", cdir)
            for p in list(cdir.glob("*.npy")) + [p for p in cdir.glob("*.json") if p.name != "cache.json"]:
                p.unlink(missing_ok=True)
    if have != want:  # unchanged: left as it is
        save_json(head, want)

    todo = [c for c in cases if not case_is_fresh(cdir, c, plan)]
    log.info("cache %s: %d of %d case(s) to preprocess", cdir, len(todo), len(cases))
    bar = tqdm(total=len(todo), desc="preprocess", disable=not progress or not todo)
    plan_dict = plan.to_dict()
    short: List[str] = []  # cases that did not fit in memory; the others go on
    try:
        if workers <= 1 or len(todo) <= 1:
            for c in todo:
                try:
                    _build_one(c, plan_dict, str(cdir))
                except (MemoryError, RuntimeError) as e:
                    failure = _memory_failure(c, e)
                    if failure is None:
                        raise
                    short.append(failure)
                bar.update()
        else:
            _build_in_workers(todo, plan_dict, cdir, workers, bar, short)
    finally:
        bar.close()
    if short:
        raise UnetrError(f"{len(short)} case(s) did not fit in memory: {'; '.join(short[:5])}"
                         f"{' ...' if len(short) > 5 else ''}; the other cases are in {cdir}. Rerun with fewer "
                         "workers (--workers 1 holds one case in memory at a time) or on a machine with more memory")
    return ids


def _build_in_workers(todo: Sequence[Case], plan_dict: dict, cdir: Path, workers: int, bar, short: List[str]) -> None:
    """Preprocess ``todo`` in ``workers`` processes; a case that runs out of memory goes to ``short`` and the
    others go on; any other failure, Ctrl-C or SIGTERM stops the workers at once."""
    import torch  # noqa: F401  (imported once here, so forked workers inherit it)

    threads = max(1, (os.cpu_count() or 1) // workers)
    # the platform default (fork on Linux): no re-import of the caller's __main__; torch resets its thread pool
    # in forked children, and the initializer sizes it
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(), initializer=_worker_init,
                               initargs=(threads, os.getpid()))
    try:
        futures = {pool.submit(_build_one, c, plan_dict, str(cdir)): c for c in todo}
        for f in as_completed(futures):
            try:
                f.result()
            except (MemoryError, RuntimeError) as e:
                failure = None if isinstance(e, BrokenProcessPool) else _memory_failure(futures[f], e)
                if failure is None:
                    raise
                short.append(failure)
            bar.update()
    except BrokenProcessPool:
        _stop_workers(pool)
        raise UnetrError(f"{cdir}: a preprocessing worker died (the system may have run out of memory and killed "
                         "it); finished cases stay in the cache. Rerun with fewer --workers") from None
    except BaseException:
        _stop_workers(pool)  # finished cases stay valid
        raise
    pool.shutdown()


def cached_ids(cache_dir: PathLike) -> List[str]:
    """The ids of the complete cases in a cache folder."""
    cdir = Path(cache_dir)
    return sorted(p.stem for p in cdir.glob("*.json")
                  if not p.name.startswith(".") and (cdir / f"{p.stem}_image.npy").is_file())


def load_cached(cache_dir: PathLike, case_id: str, mmap: bool = True
                ) -> Tuple[np.ndarray, Optional[np.ndarray], dict]:
    """One cached case: ``(image (C, X, Y, Z) float32, label (X, Y, Z) uint8 or None, record)``.

    The arrays are read-only memory maps (``mmap=False`` loads them). The record is the case's JSON: the
    preprocessing record (:meth:`unetr.data.preprocess.PreprocessRecord.from_dict` reads it) plus ``id``,
    ``sources`` and ``class_voxels``.
    """
    image_p, label_p, json_p = _paths(Path(cache_dir), case_id)
    if not json_p.is_file():
        raise DataError(f"{cache_dir}: no complete cached case {case_id!r} (run `unetr preprocess`)")
    record = load_json(json_p)
    mode = "r" if mmap else None
    image = np.load(image_p, mmap_mode=mode)
    label = np.load(label_p, mmap_mode=mode) if label_p.is_file() else None
    return image, label, record


def cache_plan(cache_dir: PathLike) -> Plan:
    """The plan a cache folder was built with."""
    return Plan.from_dict(load_json(Path(cache_dir) / "cache.json")["plan"])


__all__ = ["build_cache", "load_cached", "cached_ids", "cache_plan", "case_is_fresh", "plan_hash", "file_stamp"]
