"""The conversion driver: one source -> ``<out>/<dataset>/`` with FFCV and DALI files and ``manifest.json``.

Per split, one parallel pass decodes, converts, resizes and JPEG-encodes every sample (``images.prepare_image``, in a
process pool, results consumed in sample order) and feeds the DALI shard writer and the FFCV staging file; then the
``.beton`` is assembled from the staging file. Every file is written under a ``.partial`` name and renamed when
complete, and the manifest is rewritten (atomically) after each finished format/split, so it only ever lists
complete files. A rerun skips what the manifest lists (unless ``force``). The pass saves a checkpoint every
``shard_size`` written samples (``neatt.datasets.resume``), and a rerun continues an unfinished split from its
last checkpoint instead of its first sample.
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from tqdm import tqdm

from .dali_writer import ShardWriter
from .images import ImagePolicy, ImageSkip, prepare_image
from .manifest import (MANIFEST_NAME, ManifestError, entry_files, file_problems, file_sha256, new_manifest,
                       read_manifest, write_manifest)
from .resume import CheckpointWriter, SplitCheckpoint, checkpointed_files, drop_checkpoint, fingerprint
from .sources import DatasetSource

__all__ = ["FORMATS", "ConvertError", "ConvertOptions", "convert"]

FORMATS = ("ffcv", "dali")


class ConvertError(Exception):
    """A conversion that must stop (``--strict`` skips, an existing output made with other settings)."""


@dataclass
class ConvertOptions:
    """Args:
        policy: how images are stored.
        formats: subset of ``FORMATS``.
        workers: decoding processes (``None``: all cores).
        shard_size: samples per DALI shard.
        force: redo format/splits that the manifest already lists as complete.
        strict: any skipped input is an error (nothing of that split is kept).
        progress: show tqdm bars.
    """
    policy: ImagePolicy
    formats: tuple = FORMATS
    workers: Optional[int] = None
    shard_size: int = 5000
    force: bool = False
    strict: bool = False
    progress: bool = True


def _prepare_one(args):
    """Pool task: (index, item, policy, keep_raw) -> (index, PreparedImage or reason)."""
    index, item, policy, keep_raw = args
    try:
        return index, prepare_image(item, index, policy, keep_raw)
    except ImageSkip as e:
        return index, str(e)
    except Exception as e:  # a decoder bug on some odd file must not kill a day-long conversion; it is reported
        return index, f"unexpected decoder error ({type(e).__name__}: {e})"


def _init_worker():
    import cv2
    cv2.setNumThreads(1)  # parallelism comes from the pool; OpenCV's own threads would oversubscribe the cores


def _pool(workers: int):
    """A process pool whose workers fork from a clean server process, not from this one: forking a process that
    runs threads (OpenCV's, tqdm's monitor, a loader's) can copy a held lock into the child, which then hangs."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["neatt.datasets.convert"])
    return ctx.Pool(workers, initializer=_init_worker)


def _start_manifest(out_dir: str, source: DatasetSource, policy: ImagePolicy, force: bool) -> dict:
    """The manifest to continue from. An existing one made with other settings is an error without ``force`` and
    is replaced with it; ``force`` with the same settings drops only the splits being converted now."""
    want = {"dataset": source.name, "classes": source.classes, "image_policy": policy.as_dict(),
            "source": source.source}
    m = None
    if os.path.exists(os.path.join(out_dir, MANIFEST_NAME)):
        try:
            m = read_manifest(out_dir)
        except ManifestError as e:
            if not force:
                raise ConvertError(f"{e}\nUse --force to overwrite {out_dir}.") from None
        diff = [k for k, v in want.items() if m is not None and m[k] != v]
        if diff and not force:
            raise ConvertError(f"{out_dir} holds a conversion with different {', '.join(diff)}; use --force to "
                               f"redo it, or choose another --out")
        if diff:
            m = None
    if m is None:
        return new_manifest(source.name, source.source, source.classes, policy.as_dict())
    if force:
        for per_split in m["formats"].values():
            for split in source.splits:
                per_split.pop(split, None)
    return m


def _complete(out_dir: str, m: dict, fmt: str, split: str) -> bool:
    """Whether the manifest lists fmt/split and its files are there with the listed sizes."""
    entry = m["formats"].get(fmt, {}).get(split)
    return entry is not None and not file_problems(out_dir, entry)


def _listed_files(m: dict) -> set:
    """Relative paths of every data file the manifest lists."""
    return {rel for per_split in m["formats"].values() for e in per_split.values() for rel, _, _ in entry_files(e)}


def _remove_unlisted(out_dir: str, m: dict) -> None:
    """Delete what an interrupted or superseded run left behind (``*.partial``, ``.beton`` files and DALI shards that
    neither the manifest nor a checkpoint lists), so that every data file in the directory is a listed, complete
    one or part of a pass that a rerun continues."""
    keep = _listed_files(m) | checkpointed_files(out_dir)
    pats = ["*.partial", "*.beton", os.path.join("dali", "*")]
    for pat in pats:
        for p in glob.glob(os.path.join(out_dir, pat)):
            if os.path.relpath(p, out_dir) not in keep and os.path.isfile(p):
                os.remove(p)


def _file_entry(out_dir: str, rel: str) -> dict:
    p = os.path.join(out_dir, rel)
    return {"bytes": os.path.getsize(p), "sha256": file_sha256(p)}


def _checkpoint_to_resume(source: DatasetSource, split: str, out_dir: str, todo: list, want: dict,
                          opts: ConvertOptions, log) -> Optional[SplitCheckpoint]:
    """The split's checkpoint when the pass about to write ``todo`` can continue it (its files are then cut back to
    the checkpoint); otherwise None, after deleting it and saying why."""
    ckpt = SplitCheckpoint.load(out_dir, split)
    if ckpt is None or opts.force:
        drop_checkpoint(out_dir, split)
        return None
    name = f"{source.name}/{split}"
    reason = ckpt.why_not_usable(out_dir, want, todo)
    if reason:
        print(f"{name}: not resuming the interrupted conversion ({reason}); starting the split over", file=log)
        ckpt.discard(out_dir)
        return None
    ckpt.keep_only(out_dir, todo)
    print(f"{name}: resuming the interrupted conversion at image {ckpt.done:,} of {want['samples']:,} "
          f"(--force starts over)", file=log)
    return ckpt


def _run_split(source: DatasetSource, split: str, out_dir: str, todo: list, opts: ConvertOptions, want: dict,
               resume: Optional[SplitCheckpoint]) -> dict:
    """Decode/encode one split once, from its first sample or from ``resume``'s, and write the formats in ``todo``,
    saving a checkpoint (fingerprint ``want``) every ``shard_size`` written samples and at the end; return counts,
    skips and timings. An interruption keeps the checkpointed files; a conversion error deletes them."""
    samples = source.splits[split]
    start = resume.done if resume else 0
    pass_skipped = [tuple(s) for s in resume.skipped] if resume else []
    label_counts = np.array(resume.label_counts if resume else [0] * len(source.classes), dtype=np.int64)
    dali = None
    if "dali" in todo:
        dali = ShardWriter(out_dir, split, opts.shard_size, resume.dali_shards if resume else None)
    staging = None
    if "ffcv" in todo:
        from .ffcv_writer import BetonStaging
        staging = BetonStaging(os.path.join(out_dir, f"{split}.beton"), resume=resume is not None)

    saver = CheckpointWriter(out_dir)

    def checkpoint(done: int) -> None:
        files = {}
        if dali is not None:
            files["dali"] = dali.partial_files()
        if staging is not None:
            files["ffcv"] = {os.path.relpath(p, out_dir): n for p, n in staging.flush().items()}
        saver.save(SplitCheckpoint(split, want, done, label_counts.tolist(), [list(s) for s in pass_skipped], files,
                                   [dict(s) for s in dali.shards] if dali is not None else None))

    def delete_outputs() -> None:
        if dali is not None:
            dali.abort()
        if staging is not None:
            staging.remove()
        drop_checkpoint(out_dir, split)

    keep_raw = staging is not None and opts.policy.write_mode != "jpg"
    tasks = ((i, item, opts.policy, keep_raw) for i, (item, _) in itertools.islice(enumerate(samples), start, None))
    workers = opts.workers or os.cpu_count() or 1
    bar = tqdm(total=len(samples), initial=start, desc=f"{source.name}/{split} decode+encode", unit="img",
               disable=not opts.progress, file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    pool = _pool(workers) if workers > 1 else None
    written = int(label_counts.sum())
    try:
        results = pool.imap(_prepare_one, tasks, chunksize=16) if pool else map(_prepare_one, tasks)
        for i, res in results:
            item, label = samples[i]
            if isinstance(res, str):
                pass_skipped.append((source.relpath(item, i, split), res))
            else:
                if dali is not None:
                    dali.write(res.jpeg, label)
                if staging is not None:
                    staging.write(res, label)
                label_counts[label] += 1
                written += 1
                if written % opts.shard_size == 0:
                    checkpoint(i + 1)
            bar.update(1)
        if pool:
            pool.close()
            pool.join()
        saver.wait()  # a failed save is the pass's error; and no save may run while outputs are deleted below
    except BaseException:
        if pool:
            pool.terminate()
        for w in (dali, staging):
            if w is not None:
                w.close()
        with contextlib.suppress(Exception):  # keep the checkpoint being saved; the error raised is the pass's
            saver.wait()
        raise
    finally:
        bar.close()
    t_prepare = time.perf_counter() - t0
    skipped = [(p, r) for s, p, r in source.skipped if s == split] + pass_skipped
    if opts.strict and skipped:
        delete_outputs()
        lines = "\n".join(f"  {p}: {r}" for p, r in skipped)
        raise ConvertError(f"--strict: {len(skipped)} input(s) of {source.name}/{split} could not be converted:\n"
                           f"{lines}\nNothing was written for this split.")
    if not written:
        delete_outputs()
        raise ConvertError(f"{source.name}/{split}: none of its {len(samples)} input(s) could be converted"
                           + "".join(f"\n  {p}: {r}" for p, r in skipped[:20]))
    if dali is not None:
        dali.finish()
    checkpoint(len(samples))  # from here on, a rerun only finishes the files
    saver.wait()              # before the shards are renamed
    out = {"count": written, "label_counts": label_counts.tolist(), "skipped": skipped,
           "seconds": {"prepare": t_prepare}, "decoded": len(samples) - start, "dali": None, "staging": staging}
    if dali is not None:
        t1 = time.perf_counter()
        shards = dali.commit()
        for s in shards:
            index = _file_entry(out_dir, s["index"])
            s.update(_file_entry(out_dir, s["tar"]), index_bytes=index["bytes"], index_sha256=index["sha256"])
        out["dali"] = {"shards": shards}
        out["seconds"]["dali_finish"] = time.perf_counter() - t1
    return out


def _record_split(m: dict, split: str, res: dict) -> None:
    """Set a split's counts and skips in the manifest; a rerun must find the same counts as before."""
    info = {"count": res["count"], "label_counts": res["label_counts"]}
    old = m["splits"].get(split)
    if old is not None and old != info and any(split in v for v in m["formats"].values()):
        raise ConvertError(f"the source's {split} split changed since the formats in the manifest were written "
                           f"({old['count']} -> {info['count']} images); use --force to redo everything")
    m["splits"][split] = info
    m["skipped"] = [s for s in m["skipped"] if s.get("split") != split] + \
        [{"split": split, "path": p, "reason": r} for p, r in res["skipped"]]


def convert(source: DatasetSource, out_root: str, opts: ConvertOptions, log=None) -> dict:
    """Convert ``source`` into ``<out_root>/<source.name>/``; return a summary (manifest + per-split timings).
    Messages go to ``log`` (default: the current ``sys.stderr``)."""
    log = log or sys.stderr
    bad = [f for f in opts.formats if f not in FORMATS]
    if bad or not opts.formats:
        raise ConvertError(f"--formats: unknown {bad}; choose from {', '.join(FORMATS)}")
    out_dir = os.path.join(os.path.abspath(out_root), source.name)
    os.makedirs(out_dir, exist_ok=True)
    m = _start_manifest(out_dir, source, opts.policy, opts.force)
    _remove_unlisted(out_dir, m)
    write_manifest(out_dir, m)
    timings = {}
    for split in source.splits:
        todo = [f for f in opts.formats if not _complete(out_dir, m, f, split)]
        if not todo:
            drop_checkpoint(out_dir, split)  # left by a run stopped between its last manifest write and its cleanup
            print(f"{source.name}/{split}: already complete ({', '.join(opts.formats)}); --force redoes it", file=log)
            continue
        for fmt in todo:
            m["formats"].get(fmt, {}).pop(split, None)
        write_manifest(out_dir, m)
        want = fingerprint(source, split, opts.policy, opts.shard_size)
        resume = _checkpoint_to_resume(source, split, out_dir, todo, want, opts, log)
        _remove_unlisted(out_dir, m)
        res = _run_split(source, split, out_dir, todo, opts, want, resume)
        _record_split(m, split, res)
        if res["dali"] is not None:
            m["formats"].setdefault("dali", {})[split] = res["dali"]
        write_manifest(out_dir, m)
        if res["staging"] is not None:
            from .ffcv_writer import write_beton
            t0 = time.perf_counter()
            rel = f"{split}.beton"
            write_beton(os.path.join(out_dir, rel), res["staging"], opts.policy, opts.progress)
            m["formats"].setdefault("ffcv", {})[split] = {"file": rel, **_file_entry(out_dir, rel)}
            res["seconds"]["ffcv_finish"] = time.perf_counter() - t0
            write_manifest(out_dir, m)
        drop_checkpoint(out_dir, split)
        timings[split] = {"count": res["count"], "candidates": len(source.splits[split]), "decoded": res["decoded"],
                          "skipped": len(res["skipped"]), "formats": todo, "seconds": res["seconds"]}
    return {"out_dir": out_dir, "manifest": m, "timings": timings}
