"""Similarity indexes side by side, at library scale: build time, size on disk, query latency,
recall@10 against exact search, and the peak memory of the process that builds and queries.

    python benchmarks/similar_index.py                       # 10k, 100k and 1M vectors of width 768
    python benchmarks/similar_index.py --sizes 10000 --dim 1506 --methods exact usearch-f16

The vectors are synthetic but shaped like a library's (clusters: files of one artist, album or
instrumentation lie close together; every vector L2-normalised as the scan writes them); the
queries are vectors of the set itself, left out of their own answer as ``mictag similar`` does.
Each (method, size) runs in a fresh process, so that its peak RSS is its own. Methods:

Each row: the build (time, peak memory of the building process, size on disk), then, in a fresh
process, the index loaded from disk as a querying process (``mictag similar``) would: load time,
query latency, recall and that process's peak RSS.

- ``exact``: mictag's exact index (float32 vectors memory-mapped, one matrix product a query);
- ``usearch-f16`` (mictag's HNSW: USearch, float16 vectors in the graph, candidates re-scored
  exactly), ``usearch-f32``, ``usearch-i8``: USearch HNSW, connectivity 16, expansion 128/128;
- ``faiss-hnsw``: faiss IndexHNSWFlat (M 32, efConstruction 128, efSearch 128), inner product;
- ``faiss-ivf``: faiss IndexIVFFlat (sqrt(n)*4 lists, 16 probed).

Results go to benchmarks/results/similar-index-<time>.json, row by row as they finish (a run
stopped halfway keeps what it measured; ``--resume FILE`` skips the rows already in it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

METHODS = ("exact", "usearch-f16", "usearch-f32", "usearch-i8", "faiss-hnsw", "faiss-ivf")
K = 10


def make_vectors(path: Path, n: int, dim: int, seed: int = 0) -> None:
    """``n`` clustered unit vectors in an .npy file (written in steps: 1M x 768 is 3 GB)."""
    rng = np.random.default_rng(seed)
    clusters = max(10, n // 500)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, "w+", np.float32, (n, dim))
    for i in range(0, n, 50_000):
        m = min(50_000, n - i)
        x = centres[rng.integers(0, clusters, m)] + 0.8 * rng.standard_normal((m, dim)).astype(np.float32)
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()


def exact_answers(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The true top-K (the query itself left out) by brute force."""
    truth = np.empty((len(queries), K), np.int64)
    best = np.full((len(queries), K + 1), -np.inf, np.float32)
    bestk = np.zeros((len(queries), K + 1), np.int64)
    q = vectors[queries]
    for i in range(0, len(vectors), 100_000):
        sims = q @ vectors[i : i + 100_000].T
        sims[queries[:, None] - i == np.arange(sims.shape[1])[None, :]] = -np.inf
        allv = np.concatenate([best, sims], axis=1)
        allk = np.concatenate([bestk, np.arange(i, i + sims.shape[1])[None, :].repeat(len(q), 0)], axis=1)
        top = np.argsort(-allv, axis=1)[:, : K + 1]
        best, bestk = np.take_along_axis(allv, top, 1), np.take_along_axis(allk, top, 1)
    truth[:] = bestk[:, :K]
    return truth


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def build_one(method: str, vectors_path: Path, queries: np.ndarray, work: Path) -> dict:
    """Build one index in this process and save it under ``work`` (with the query vectors)."""
    vectors = np.load(vectors_path, mmap_mode="r")
    n, dim = vectors.shape
    query_vectors = np.array(vectors[queries])
    threads = os.cpu_count() or 1
    t0 = time.perf_counter()
    config: dict = {}
    if method in ("exact", "usearch-f16"):
        from mictag.output.embeddings import Files
        from mictag.similar.index import HNSW, _new_hnsw, _save_hnsw, _write_keys

        folder = work / "index"
        folder.mkdir()
        with open(folder / "vectors.f32", "wb") as f:
            for i in range(0, n, 100_000):
                f.write(np.ascontiguousarray(vectors[i : i + 100_000]).tobytes())
        _write_keys(folder, Files([f"f{i}" for i in range(n)], np.zeros(n, np.int64), np.zeros(n), [""] * n,
                                  np.ones(n, bool)))
        if method == "usearch-f16":
            hnsw = _new_hnsw(dim)
            for i in range(0, n, 100_000):
                part = np.ascontiguousarray(vectors[i : i + 100_000])
                hnsw.add(np.arange(i, i + len(part), dtype=np.uint64), part, threads=threads)
            _save_hnsw(folder, hnsw)
            config = HNSW
            del hnsw
        saved = folder
    elif method.startswith("usearch"):
        from usearch.index import Index

        from mictag.similar.index import HNSW

        index = Index(ndim=dim, metric="cos", dtype=method.split("-")[1], **HNSW)
        for i in range(0, n, 100_000):
            part = np.ascontiguousarray(vectors[i : i + 100_000])
            index.add(np.arange(i, i + len(part), dtype=np.uint64), part, threads=threads)
        saved = work / "i.usearch"
        index.save(str(saved))
        config = HNSW
        del index
    else:
        import faiss

        faiss.omp_set_num_threads(threads)
        if method == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 128
            config = {"M": 32, "efConstruction": 128, "efSearch": 128}
        else:
            lists = int(4 * np.sqrt(n))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.ascontiguousarray(vectors[np.random.default_rng(1).choice(n, min(n, 40 * lists), replace=False)])
            index.train(sample)
            config = {"nlist": lists, "nprobe": 16}
        for i in range(0, n, 100_000):
            index.add(np.ascontiguousarray(vectors[i : i + 100_000]))
        saved = work / "i.faiss"
        faiss.write_index(index, str(saved))
        del index
    build = time.perf_counter() - t0
    np.save(work / "query-vectors.npy", query_vectors)
    return {"build_s": build, "build_peak_rss_mb": _peak_rss_mb(), "size_bytes": _folder_size(saved),
            "saved": str(saved), "config": config}


def query_one(method: str, saved: Path, n: int, dim: int, queries: np.ndarray, query_vectors: np.ndarray) -> dict:
    """In a fresh process: load the saved index as ``mictag similar`` would, and answer the queries."""
    t1 = time.perf_counter()
    if method in ("exact", "usearch-f16"):
        from mictag.similar.index import LibraryIndex, Manifest, _load_hnsw, _read_keys

        index = LibraryIndex(saved, Manifest("hnsw" if method != "exact" else "exact", "", dim, n, n, 0, 0),
                             _read_keys(saved, n), _load_hnsw(saved, view=True) if method != "exact" else None)

        def query(q: int, v: np.ndarray) -> list[int]:
            return [k for k, _ in index.search(v, K, exclude={q})]
    elif method.startswith("usearch"):
        from usearch.index import Index

        from mictag.similar.index import HNSW

        index = Index.restore(str(saved))
        index.expansion_search = HNSW["expansion_search"]  # (not saved with the graph)

        def query(q: int, v: np.ndarray) -> list[int]:
            return [int(k) for k in index.search(v, K + 1).keys if k != q][:K]
    else:
        import faiss

        index = faiss.read_index(str(saved))
        if method == "faiss-hnsw":
            index.hnsw.efSearch = 128
        else:
            index.nprobe = 16

        def query(q: int, v: np.ndarray) -> list[int]:
            _, found = index.search(v[None, :], K + 1)
            return [int(k) for k in found[0] if k != q][:K]
    load = time.perf_counter() - t1
    for q, v in list(zip(queries, query_vectors))[:5]:  # warm: the first queries page the index in
        query(int(q), v)
    latencies, answers = [], []
    for q, v in zip(queries, query_vectors):
        t = time.perf_counter()
        answers.append(query(int(q), v))
        latencies.append(time.perf_counter() - t)
    return {"load_s": load, "latency_ms_median": 1e3 * float(np.median(latencies)),
            "latency_ms_p95": 1e3 * float(np.percentile(latencies, 95)), "answers": answers,
            "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak resident memory since its exec (VmHWM; ru_maxrss would carry over the
    parent's peak from before the fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=768, help="768: the AST's embedding (musicnn's pooled features: 1506)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--work", type=Path, default=None, help="where the vectors and indexes are written (big)")
    ap.add_argument("--resume", type=Path, help="a results file to add to (its rows are skipped)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one (method, size) in fresh processes: "build" or "query"
        phase, method, work = args.child
        work = Path(work)
        queries = np.load(work / "queries.npy")
        spec = json.loads((work / "spec.json").read_text())
        if phase == "build":
            r = build_one(method, Path(spec["vectors"]), queries, work)
        else:
            r = query_one(method, Path(spec["saved"]), spec["n"], spec["dim"], queries,
                          np.load(work / "query-vectors.npy"))
        print(json.dumps(r))
        return r
    from engine import machine

    out = args.resume or HERE / "results" / f"similar-index-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = json.loads(out.read_text()) if args.resume and out.exists() else {
        "benchmark": "similar_index", "machine": machine(), "dim": args.dim, "k": K, "rows": []}
    done = {(r["method"], r["n"]) for r in result["rows"]}
    work_root = Path(args.work or tempfile.mkdtemp(prefix="mictag-similar-"))
    work_root.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        vectors_path = work_root / f"vectors-{n}-{args.dim}.npy"
        if not vectors_path.exists():
            make_vectors(vectors_path, n, args.dim)
        vectors = np.load(vectors_path, mmap_mode="r")
        queries = np.random.default_rng(2).choice(n, args.queries, replace=False)
        t0 = time.perf_counter()
        truth = exact_answers(vectors, queries)
        truth_s = time.perf_counter() - t0
        for method in args.methods:
            if (method, n) in done:
                continue
            work = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=work_root))
            np.save(work / "queries.npy", queries)
            spec = {"vectors": str(vectors_path), "n": n, "dim": args.dim}
            (work / "spec.json").write_text(json.dumps(spec))
            r, failed = {}, None
            for phase in ("build", "query"):
                got = subprocess.run([sys.executable, __file__, "--child", phase, method, str(work)],
                                     capture_output=True, text=True)
                if got.returncode:
                    failed = got.stderr.strip().splitlines()[-1:]
                    break
                r.update(json.loads(got.stdout.strip().splitlines()[-1]))
                if phase == "build":
                    (work / "spec.json").write_text(json.dumps({**spec, "saved": r.pop("saved")}))
            subprocess.run(["rm", "-rf", str(work)])
            if failed:
                print(f"{method} n={n}: failed: {failed}", flush=True)
                continue
            recall = float(np.mean([len(set(a) & set(t)) / K for a, t in zip(r.pop("answers"), truth)]))
            row = {"method": method, "n": n, "recall_at_10": recall, **r, "brute_force_s_all_queries": truth_s}
            result["rows"].append(row)
            out.write_text(json.dumps(result, indent=1))
            print(f"{method:12s} n={n:>8}: build {row['build_s']:7.1f} s ({row['build_peak_rss_mb']:6.0f} MB), "
                  f"{row['size_bytes'] / 2**20:7.1f} MiB on disk, load {row['load_s']:5.2f} s, "
                  f"query {row['latency_ms_median']:7.2f} ms (p95 {row['latency_ms_p95']:7.2f}), "
                  f"recall@10 {recall:.3f}, querying RSS {row['peak_rss_mb']:6.0f} MB", flush=True)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
