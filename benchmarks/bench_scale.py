"""Large collections: the image store against raw decoding and the in-memory path.

Generates a synthetic long-tailed folder of photo-like JPEGs (smooth random fields with
edges, 200-500 px, classes from ``--head`` images down to ``--tail``), outside the
repository, then reports in one run, on one machine:

- raw decode rate: ``decode_chunk`` on every core over a sample of the files (images/s);
- the store's build rate (``fassl prepare`` from an empty cache) and its ratio to the raw rate;
- time to the first step, cold (no store yet: the build included) and warm (store there);
- peak private memory (RssAnon, sampled) per rank, with 1 and with 2 ranks (torchrun);
- steady images/s of the training step, the store memory-mapped beside the same images
  held in memory (when they fit);
- ``fassl embed`` and ``fassl rare`` wall time over the whole folder.

    python benchmarks/bench_scale.py --images 200000 --size 64 --root /tmp/fassl-scale
    python benchmarks/bench_scale.py --images 2000 --size 32 --root /tmp/s --steps 10  # quick

Results go to ``benchmarks/results/scale_<N>_<S>px.json`` (and are printed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


# ---- the synthetic folder ------------------------------------------------------------
def class_counts(images: int, head: int, tail: int) -> list[int]:
    """Per-class counts falling exponentially from ``head`` to ``tail`` whose sum is about
    ``images`` (the number of classes follows)."""
    counts: list[int] = []
    ratio = head / tail
    classes = 2
    while True:  # the smallest class count whose profile holds the images
        profile = [round(head * ratio ** (-c / (classes - 1))) for c in range(classes)]
        if sum(profile) >= images or classes > 100_000:
            counts = profile
            break
        classes = int(classes * 1.2) + 1
    return counts


def _photo(rng: np.random.Generator, sides: tuple[int, int] = (200, 500)) -> Any:
    """A photo-like image: a smooth colour field (a few random colours, bicubically
    spread) with a few filled shapes' hard edges; ``sides`` px a side (200-500)."""
    from PIL import Image, ImageDraw

    w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
    coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
    img = Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(10, max(11, min(w, h) // 3)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)
    return img


def _write_class(job: tuple[str, int, int, int, tuple[int, int]]) -> int:
    root, c, n, seed, sides = job
    folder = Path(root) / f"class{c:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed * 100_003 + c)
    written = 0
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        image = _photo(rng, sides)  # drawn even when the file exists: the same images on resume
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            image.save(tmp, "JPEG", quality=90)
            os.replace(tmp, path)
            written += 1
    return written


def generate(
    root: Path,
    images: int,
    head: int,
    tail: int,
    seed: int = 0,
    sides: tuple[int, int] = (200, 500),
) -> int:
    """Write the folder (resumable: existing files are kept); returns the image count."""
    counts = class_counts(images, head, tail)
    jobs = [(str(root), c, n, seed, sides) for c, n in enumerate(counts)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.map(_write_class, jobs, chunksize=4)
    return sum(counts)


# ---- measurements --------------------------------------------------------------------
def raw_decode_rate(root: Path, size: int, sample: int = 4000) -> float:
    """Images/s of ``decode_chunk`` on every core over a seeded sample of the files."""
    from fassl.data.files.decode import decode_chunk

    files = sorted(root.rglob("*.jpg"))
    pick = np.random.default_rng(0).permutation(len(files))[:sample]
    paths = [files[i] for i in pick]
    chunks = [(paths[i : i + 64], size) for i in range(0, len(paths), 64)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        t0 = time.perf_counter()
        pool.starmap(decode_chunk, chunks)
        return len(paths) / (time.perf_counter() - t0)


def fassl(*args: str, env: dict[str, str] | None = None) -> float:
    """Run ``fassl ARGS`` to the end; its wall time."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fassl.cli", *args],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def child_command(args: argparse.Namespace, cache: Path, out: Path, in_memory: bool) -> list[str]:
    return [
        str(Path(__file__).resolve()),
        "_child",
        "--root", str(args.root / "images"),
        "--size", str(args.size),
        "--cache", str(cache),
        "--steps", str(args.steps),
        "--batch", str(args.batch),
        "--width", str(args.width),
        "--out", str(out),
        *(["--in-memory"] if in_memory else []),
        *(["--export", args.export] if args.export else []),
    ]  # fmt: skip


def run_child(args: argparse.Namespace, cache: Path, ranks: int, in_memory: bool) -> list[dict]:
    """One training probe (``_child``) under 1 or 2 ranks; each rank's measurements."""
    out = args.root / f"child-{ranks}-{int(in_memory)}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = child_command(args, cache, out, in_memory)
    if ranks == 1:
        subprocess.run([sys.executable, *cmd], check=True, env=env)
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        subprocess.run([*torchrun, f"--nproc_per_node={ranks}", *cmd], check=True, env=env)
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


class PeakAnon:
    """Samples this process's RssAnon (private memory) every 0.1 s; keeps the peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def child(args: argparse.Namespace) -> None:
    """In a (torchrun) process: load the folder as a run does, build the trainer, take
    ``--steps`` steps; write time to first step, steady images/s and peak RssAnon."""
    memory = PeakAnon()
    t0 = time.perf_counter()
    import torch

    from fassl import distributed as dist
    from fassl.config import load_config
    from fassl.data import build_data
    from fassl.data.files import store
    from fassl.methods import build_method
    from fassl.runtime import runtime_for
    from fassl.train.loop import Trainer, batch_indices

    if args.in_memory:
        store.IN_MEMORY_BYTES = 1 << 62
    cfg = load_config(
        None,
        [
            "data.dataset=folder",
            f"data.root={args.root}",
            "data.labeled=false",
            f"data.image_size={args.size}",
            f"data.cache_dir={args.cache}",
            "data.max_memory_gb=1000" if args.in_memory else "data.max_memory_gb=8",
            f"model.width={args.width}",
            f"optim.batch_size={args.batch}",
            "train.device=cpu",
            "train.progress=false",
            f"out_dir={args.out}",
        ],
    )
    rt = runtime_for(cfg.train)
    data = build_data(cfg.data, cfg.seed)
    t_data = time.perf_counter() - t0
    torch.manual_seed(0)
    trainer = Trainer(build_method(cfg, "simclr"), data, cfg, cfg.optim, args.out, rt, "s")
    index = batch_indices(len(data.pretrain), cfg.optim.batch_size, cfg.seed, 0)
    times = []
    for i in range(min(args.steps, len(index))):
        trainer.train_step(index[i], i)
        times.append(time.perf_counter())
    first = times[0] - t0
    warm = times[min(3, len(times) - 1) :]
    rate = (len(warm) - 1) * cfg.optim.batch_size / (warm[-1] - warm[0]) if len(warm) > 1 else 0
    if dist.is_main() and args.export:
        from fassl.config import to_yaml
        from fassl.train.checkpoint import export_encoder

        export_encoder(trainer.method, cfg, Path(args.export))
        (Path(args.export).parent / "config.yaml").write_text(to_yaml(cfg))
    result = {
        "rank": dist.rank(),
        "world": dist.world_size(),
        "images": len(data.pretrain),
        "stored": type(data.pretrain.images).__name__,
        "data_s": t_data,
        "first_step_s": first,
        "img_per_s": rate,
        "peak_rss_anon_gib": memory.stop() / 2**30,
    }
    (Path(args.out) / f"rank{dist.rank()}.json").write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench", choices=("bench", "_child"))
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--head", type=int, default=1000, help="images of the largest class")
    p.add_argument("--tail", type=int, default=5, help="images of the smallest class")
    p.add_argument("--size", type=int, default=64)
    p.add_argument(
        "--source-px",
        default="200,500",
        help="MIN,MAX side of the generated JPEGs (smaller: a million written and decoded "
        "in minutes; the store and the training read --size px whatever the source)",
    )
    p.add_argument("--root", type=Path, default=Path("/tmp/fassl-scale"))
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--export", type=str, default="")
    p.add_argument("--in-memory", action="store_true")
    p.add_argument("--skip", default="", help="comma-separated: memory2, inmemory, cold, tools")
    args = p.parse_args()
    if args.mode == "_child":
        child(args)
        return
    skip = set(filter(None, args.skip.split(",")))
    args.root = args.root.absolute()
    images = args.root / "images"
    t0 = time.perf_counter()
    lo, hi = (int(v) for v in args.source_px.split(","))
    n = generate(images, args.images, args.head, args.tail, sides=(lo, hi))
    print(f"folder: {n:,} images in {images} ({time.perf_counter() - t0:.0f} s to write)")
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": platform.processor() or platform.machine(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "images": n,
        "size": args.size,
        "source_px": [lo, hi],
    }
    result["raw_decode_img_per_s"] = raw_decode_rate(images, args.size)
    cache = args.root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    prepare = (
        "prepare", str(images), f"data.image_size={args.size}", f"data.cache_dir={cache}",
        "data.labeled=false",
    )  # fmt: skip
    build_s = fassl(*prepare)
    result["store_build_s"] = build_s
    result["store_open_s"] = fassl(*prepare)  # the store there: list, check, open
    result["store_build_img_per_s"] = n / build_s
    result["build_over_raw"] = result["store_build_img_per_s"] / result["raw_decode_img_per_s"]
    result["store_gib_on_disk"] = sum(f.stat().st_size for f in cache.rglob("*.npy")) / 2**30
    one = run_child(args, cache, 1, in_memory=False)[0]
    result["warm_first_step_s"] = one["first_step_s"]
    result["stored_img_per_s"] = one["img_per_s"]
    result["peak_rss_anon_gib_1rank"] = one["peak_rss_anon_gib"]
    result["stored_as"] = one["stored"]
    if "memory2" not in skip:
        two = run_child(args, cache, 2, in_memory=False)
        result["peak_rss_anon_gib_2ranks"] = [r["peak_rss_anon_gib"] for r in two]
        # each rank times the global batch: the ranks' mean is the run's rate
        result["img_per_s_2ranks"] = sum(r["img_per_s"] for r in two) / len(two)
    if "inmemory" not in skip:
        mem = run_child(args, cache, 1, in_memory=True)[0]
        result["in_memory_img_per_s"] = mem["img_per_s"]
        result["in_memory_peak_rss_anon_gib"] = mem["peak_rss_anon_gib"]
        result["stored_over_in_memory"] = result["stored_img_per_s"] / mem["img_per_s"]
    if "cold" not in skip:  # the store built by the run itself, from an empty cache
        cold_cache = args.root / "cache-cold"
        shutil.rmtree(cold_cache, ignore_errors=True)
        args.export = str(args.root / "encoder.safetensors")
        cold = run_child(args, cold_cache, 1, in_memory=False)[0]
        result["cold_first_step_s"] = cold["first_step_s"]
        shutil.rmtree(cold_cache, ignore_errors=True)
    if "tools" not in skip and "cold" not in skip:  # the cold run exports the encoder
        keys = [f"data.image_size={args.size}", f"data.cache_dir={cache}", "train.progress=false"]
        enc = args.export
        result["embed_s"] = fassl("embed", enc, str(images), "--out", str(args.root / "emb"), *keys)
        result["rare_s"] = fassl("rare", enc, str(images), "--out", str(args.root / "rare"), *keys)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scale_{n}_{args.size}px.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
