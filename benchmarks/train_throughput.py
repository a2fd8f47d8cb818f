"""Training throughput: images/s per model and the fraction of the matmul rate it achieves.

    PYTHONPATH=. python benchmarks/train_throughput.py                        # CPU, all 5 models
    PYTHONPATH=. python benchmarks/train_throughput.py --models BaselineCNN   # ~1 min
    OMP_WAIT_POLICY= PYTHONPATH=. python benchmarks/train_throughput.py --models BaselineCNN \
        --no-malloc-tuning --optimizer-impl forloop                           # the plain loop
    PYTHONPATH=. python benchmarks/train_throughput.py --device cuda --batch-size 256
        # GPU, all 5 models: the bare step under bf16 autocast, then the whole loop
        # (train_one_epoch) next to it, and their ratio (target: loop >= 0.85 of step)
    PYTHONPATH=. python benchmarks/train_throughput.py --device cuda --batch-size 256 --models BestModel --compile

What it measures. Training steps (forward, cross-entropy, backward, optimizer step, lr schedule
step: `--recipe`'s, built by tinyimagenet.train exactly as a run builds them; default "seed",
Adam 1e-4) on channels_last batches made beforehand by a `BatchLoader` over random uint8 images
(the loader's own rate is a separate column). The achieved rate is images/s x 3 x forward
FLOPs/image (`model_summary`; x3: the backward pass costs about twice the forward), divided by a
dense matmul rate measured in the
same run: fp32 2048^3 `torch.mm` on CPU; bf16 8192^3 on CUDA, where training runs under bf16
autocast. The last line is `fraction_of_matmul_peak: R` for BaselineCNN (or the first model).

The whole loop (CUDA; `--no-epoch` skips it). Per model, `train_one_epoch` itself over an epoch
of `--epoch-images` random images (default 100,000, Tiny ImageNet's train split: 390 full batches
of 256 and a last one of 160) with the same optimizer, batch size, augmentation, schedule and
loss as the bare step, so the difference is what the loop adds: the loader's shuffle, crop, flip
and normalization, the bookkeeping and the loss checks every `sync_every` steps. After a warm-up
epoch that includes a batch of the last batch's size (cuDNN's algorithm search, or compilation,
runs per shape), whole epochs are timed until at least `--epoch-seconds` (5) have passed.
`loop/step` is the loop's images/s over the bare step's best; the issue's target is >= 0.85.
Written without a GPU: the CUDA side has not run yet (tests/test_cuda.py runs it small).

Noise. The CPU box is shared: other jobs take one or both cores at any moment, so a rate measured
a minute before another says little. The matmul rate is therefore sampled between all training
repeats, and the ratio (`of matmul`, and the last line) is the median over repeats of the repeat's
GFLOP/s divided by the better of the two matmul samples bracketing it. The table also shows the
best (what the code can do), median and min img/s, `cores` (CPU-seconds per second the process
got: 1.0 of 2 means another job held a core) and `best/best`, best repeat vs best matmul sample of
the whole run, which swings from 0.4 to 0.8 with the load.

Measured on the 2-core AMD EPYC (Zen 3, AVX2) box, BaselineCNN, batch 64, alternating A/B runs
(ranges over 3 runs each; "busy": ~1 core free, load average 4-6; "quiet": ~1.9 cores free):
    plain loop (libgomp's default wait policy, glibc malloc as is, for-loop Adam):
        busy 20-32 img/s, fraction ~0.43;  quiet 58-73 img/s, fraction 0.48-0.54
    these defaults:
        busy 50-56 img/s, fraction ~0.72;  quiet 72-117 img/s, fraction 0.60-0.77
What helped, one change at a time against these defaults:
    malloc tuning (keep_freed_memory)     +20-30% img/s, busy or quiet: no page faults re-zeroing
                                          each step's activations
    OMP_WAIT_POLICY=PASSIVE               +35-50% when another job holds a core; no change quiet
    channels_last vs NCHW                 +15-30%
    Adam fused vs foreach/for-loop        +0-10% (one pass over the 8.4M-weight Linear)
No help: batch 128/256 vs 64 (within +-10%, no consistent winner), torch.compile (~30% slower on
CPU here, ~70 s to compile), mkldnn disabled (~20% slower), keeping grads (set_to_none=False),
GOMP_SPINCOUNT 1e4/1e5 vs PASSIVE (same), 1 thread (as fast as 2 when one core is free, 0.5-0.65x
when two are). Two 1-thread processes side by side did ~55 img/s each: data-parallel processes
(torchrun --nproc_per_node=2, OMP_NUM_THREADS=1) may beat one 2-thread process by ~20-30%
before the gradient all-reduce, not measured here.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# Must precede `import torch` (libgomp reads it when loaded). By default an idle OpenMP thread
# spins for a while before sleeping; when another job holds the other core, every parallel region
# then waits on a descheduled partner while its own core spins. PASSIVE sleeps at once. Measured
# on the busy 2-core box: 2-thread training +35-50% (see the report in the module docstring).
# OMP_WAIT_POLICY=ACTIVE or PASSIVE is respected; an empty value means libgomp's own default.
if os.environ.get("OMP_WAIT_POLICY") == "":
    del os.environ["OMP_WAIT_POLICY"]
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without PYTHONPATH too

from tinyimagenet.loaders import BatchLoader  # noqa: E402
from tinyimagenet.registry import MODELS, build_model, model_summary  # noqa: E402
from tinyimagenet.runtime import keep_freed_memory  # noqa: E402
from tinyimagenet.train import RECIPES, TrainConfig, make_optimizer as run_optimizer, make_scheduler, \
    train_one_epoch  # noqa: E402

NUM_CLASSES = 200


# ------------------------------------------------------------------------------ helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulProbe:
    """Dense n x n @ n x n GFLOP/s, sampled repeatedly during the run (`sample()`, ~0.3 s each).

    The reference rate is sampled next to every timed training repeat rather than once at the
    start: other jobs come and go on a shared machine, and a ratio of two figures taken minutes
    apart mostly measures how the load changed in between.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, n: int):
        self.device, self.n = device, n
        self.a = torch.randn(n, n, device=device, dtype=dtype)
        self.b = torch.randn(n, n, device=device, dtype=dtype)
        self.out = torch.empty(n, n, device=device, dtype=dtype)
        self.rates: list[float] = []
        torch.mm(self.a, self.b, out=self.out)  # warm-up: thread pool, kernel choice, page faults
        sync(device)
        t0 = time.perf_counter()
        torch.mm(self.a, self.b, out=self.out)
        sync(device)
        self.inner = max(1, int(0.3 / max(time.perf_counter() - t0, 1e-6)))

    def sample(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(self.inner):
            torch.mm(self.a, self.b, out=self.out)
        sync(self.device)
        self.rates.append(2 * self.n ** 3 * self.inner / (time.perf_counter() - t0) / 1e9)
        return self.rates[-1]


def random_loader(batch_size: int, batches: int, device: torch.device, seed: int = 0) -> BatchLoader:
    """A training BatchLoader (shuffle, crop+flip, normalize) over random uint8 images."""
    g = torch.Generator().manual_seed(seed)
    n = batch_size * batches
    images = torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return BatchLoader(images, targets, batch_size, train=True, device=device, seed=seed)


def run_config(name: str, args, device: torch.device) -> TrainConfig:
    """The TrainConfig both sides of the comparison are built from (optimizer, schedule, loss)."""
    return TrainConfig(model=name, recipe=args.recipe, batch_size=args.batch_size, epochs=1,
                       device=str(device), amp=args.amp, channels_last=args.channels_last,
                       compile=args.compile, progress=False).resolved()


def make_optimizer(model, cfg: TrainConfig, impl: str) -> torch.optim.Optimizer:
    """The run's optimizer (tinyimagenet.train.make_optimizer: same groups, lr, weight decay),
    with its kernels swapped to `impl` when that is not the run's fused one."""
    optimizer = run_optimizer(model, cfg)
    if impl != "fused":
        for group in optimizer.param_groups:  # read at every step (state is created at the first)
            group["fused"], group["foreach"] = None, impl == "foreach"
    return optimizer


def build(name: str, args, device: torch.device):
    """(model, net, cfg): a fresh model on `device` (seed 0), compiled as `fit` compiles it."""
    cfg = run_config(name, args, device)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(name, num_classes=NUM_CLASSES).to(device, memory_format=fmt).train()
    net = torch.compile(model, dynamic=False) if args.compile else model
    return model, net, cfg


def make_step(net, optimizer, scheduler, cfg: TrainConfig, device: torch.device, set_to_none: bool):
    """One training step: train_one_epoch's, less the loader, the bookkeeping and the checks."""
    amp = cfg.amp and device.type == "cuda"

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=set_to_none)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss
    return step


# ----------------------------------------------------------------------- per-model timing
def time_model(name: str, args, device: torch.device, probe: MatmulProbe) -> dict:
    """images/s per repeat for one model, plus the CPU cores the process actually got.

    Each repeat runs the same cached batches; their number is `--steps`, or (by default) what
    fills about `--seconds` at the warm-up rate, so the 13 GFLOP/image BestModel is measured
    briefly and BaselineCNN for long enough.
    """
    model, net, cfg = build(name, args, device)
    flops = model_summary(model)["flops"]
    optimizer = make_optimizer(model, cfg, args.optimizer_impl)
    max_steps = args.steps or args.max_steps
    scheduler = make_scheduler(optimizer, cfg, args.warmup + max_steps)
    step = make_step(net, optimizer, scheduler, cfg, device, set_to_none=args.set_to_none)
    loader = random_loader(args.batch_size, args.warmup + max_steps, device)
    # The loader yields channels_last; --no-channels-last feeds NCHW end to end.
    batches = [(x if args.channels_last else x.contiguous(), y) for x, y in loader]
    sync(device)
    t0 = time.perf_counter()
    for x, y in batches[:args.warmup]:  # kernel selection, allocator growth, compilation
        step(x, y)
    sync(device)
    per_step = (time.perf_counter() - t0) / max(1, args.warmup)
    steps = args.steps or max(1, min(max_steps, round(args.seconds / max(per_step, 1e-9))))
    timed = batches[args.warmup:args.warmup + steps]
    rates, cores, mm = [], [], [probe.sample()]
    for _ in range(args.repeats):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for x, y in timed:
            loss = step(x, y)
        sync(device)
        wall = time.perf_counter() - t0
        rates.append(args.batch_size * len(timed) / wall)
        cores.append((time.process_time() - c0) / wall)
        mm.append(probe.sample())
    # Each repeat against the better of the matmul samples just before and after it: the two
    # share the machine's load of that moment, so the ratio does not swing with other jobs.
    paired = [r * 3 * flops / 1e9 / max(a, b) for r, a, b in zip(rates, mm, mm[1:])]
    if not torch.isfinite(loss):
        raise RuntimeError(f"{name}: loss became {loss.item()} during the benchmark")
    del batches, timed
    # The loader's own cost (shuffle, crop/flip, normalize), shown so it is not hidden: the
    # timed loop above reuses batches made beforehand.
    loader.set_epoch(1)
    sync(device)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    sync(device)
    loader_rate = len(loader) * args.batch_size / (time.perf_counter() - t0)
    return {"name": name, "flops": flops, "rates": rates, "cores": cores, "steps": steps,
            "paired": paired, "matmul": mm, "loader_img_s": loader_rate}


def random_images(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n random uint8 64x64 images and labels, made on `device` (100,000 would take seconds to
    generate on the host and copy; on a GPU they are a 1.2 GB kernel)."""
    g = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, device=device, generator=g)
    return images, torch.randint(0, NUM_CLASSES, (n,), device=device, generator=g)


def time_loop(name: str, args, device: torch.device) -> dict:
    """images/s of train_one_epoch itself, whole epochs, at least --epoch-seconds of them."""
    model, net, cfg = build(name, args, device)
    optimizer = make_optimizer(model, cfg, args.optimizer_impl)
    images, targets = random_images(args.epoch_images, device)
    loader = BatchLoader(images, targets, cfg.batch_size, train=True, device=device, seed=cfg.seed)
    scheduler = make_scheduler(optimizer, cfg, len(loader))
    # Warm-up: two full batches and one of the epoch's last size, so that every shape the timed
    # epochs see has had its cuDNN search (or compilation) and allocator growth already.
    last = args.epoch_images % cfg.batch_size
    k = 2 * cfg.batch_size + (last if last >= 2 else 0)
    warm = BatchLoader(images[:k], targets[:k], cfg.batch_size, train=True, device=device, seed=cfg.seed)
    train_one_epoch(net, warm, optimizer, scheduler, epoch=0, cfg=cfg)
    sync(device)
    trained = torch.zeros((), dtype=torch.float64, device=device)
    epochs, t0 = 0, time.perf_counter()
    while epochs == 0 or time.perf_counter() - t0 < args.epoch_seconds:
        epochs += 1  # each epoch ends at a sync point already: reading the clock here is free
        pos = train_one_epoch(net, loader, optimizer, scheduler, epoch=epochs, cfg=cfg)
        trained += pos["sums"][2]  # stays on the device until the end
    sync(device)
    seconds = time.perf_counter() - t0
    images_done = int(trained.item())
    return {"epochs": epochs, "images": images_done, "seconds": seconds, "img_s": images_done / seconds,
            "steps_per_epoch": len(loader), "last_batch": last, "sync_every": cfg.sync_every}


# ------------------------------------------------------------------------------ CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Training images/s and fraction of the matmul rate.")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="NAME",
                   help=f"models to time (default: all of {', '.join(MODELS)})")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--recipe", default="seed", choices=sorted(RECIPES),
                   help="optimizer, lr schedule and loss of both sides (default: seed, Adam 1e-4)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per repeat (default: what fills --seconds, at most --max-steps)")
    p.add_argument("--seconds", type=float, default=None, help="target per repeat (default: 3 CPU, 1 CUDA)")
    p.add_argument("--max-steps", type=int, default=None, help="default: 8 CPU, 100 CUDA")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 CPU, 10 CUDA)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; best, median and min are shown")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU count)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow to start)")
    p.add_argument("--optimizer-impl", default="fused", choices=["fused", "foreach", "forloop"],
                   help="optimizer kernels (default: fused, one pass over each parameter, as runs use)")
    p.add_argument("--keep-grads", dest="set_to_none", action="store_false",
                   help="zero grads in place instead of setting them to None")
    p.add_argument("--no-malloc-tuning", dest="malloc_tuning", action="store_false",
                   help="CPU: leave glibc's mmap threshold alone (see keep_freed_memory)")
    p.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn.enabled = False")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="CUDA: fp32 instead of bf16 autocast")
    p.add_argument("--matmul-size", type=int, default=None, help="default: 2048 CPU, 8192 CUDA")
    p.add_argument("--no-epoch", dest="epoch", action="store_false",
                   help="CUDA: skip timing the whole loop (train_one_epoch)")
    p.add_argument("--epoch-images", type=int, default=100_000,
                   help="CUDA: images per timed epoch (default: Tiny ImageNet's train split)")
    p.add_argument("--epoch-seconds", type=float, default=5.0,
                   help="CUDA: time whole epochs until at least this long (default 5)")
    return p


def resolve_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device must be cpu or cuda[:N], got {name!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"error: --device {name}: CUDA is not available on this machine "
                     "(torch.cuda.is_available() is False); run with --device cpu.")
        if (device.index or 0) >= torch.cuda.device_count():
            sys.exit(f"error: --device {name}: only {torch.cuda.device_count()} CUDA device(s) here.")
        # An explicit index: torch.cuda.set_device and friends reject a bare "cuda".
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    return device


def main(argv=None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    device = resolve_device(parser, args.device)
    cpu = device.type == "cpu"
    # Short repeats, many of them: the best one then covers a window of the machine's load about
    # as short as the matmul samples' (0.3 s), so best vs best compares like with like.
    args.seconds = args.seconds or (3.0 if cpu else 1.0)
    args.max_steps = args.max_steps or (8 if cpu else 100)
    args.warmup = args.warmup if args.warmup is not None else (2 if cpu else 10)
    args.matmul_size = args.matmul_size or (2048 if cpu else 8192)
    if cpu:
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        malloc = keep_freed_memory() if args.malloc_tuning else False
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        malloc = False
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False

    # Training runs in bf16 under autocast on CUDA, so that is the matmul rate to compare with.
    mm_dtype = torch.bfloat16 if device.type == "cuda" and args.amp else torch.float32
    probe = MatmulProbe(device, mm_dtype, args.matmul_size)
    for _ in range(3):
        probe.sample()
    where = torch.cuda.get_device_name(device) if not cpu else \
        f"CPU ({os.cpu_count()} cores), {torch.get_num_threads()} threads, " \
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, malloc tuning {'on' if malloc else 'off'}"
    print(f"device: {where}; torch {torch.__version__}")
    print(f"batch {args.batch_size}; {'channels_last' if args.channels_last else 'NCHW'}; "
          f"recipe {args.recipe} ({RECIPES[args.recipe]['optimizer']}, {args.optimizer_impl}); compile {args.compile}; "
          f"{'bf16 autocast' if mm_dtype == torch.bfloat16 else 'fp32'}; {args.repeats} repeats", flush=True)

    loops = device.type == "cuda" and args.epoch
    results = {}
    for model_name in args.models:
        r = time_model(model_name, args, device, probe)
        results[model_name] = r
        print(f"  {model_name}: {', '.join(f'{x:.1f}' for x in r['rates'])} img/s", flush=True)
        if loops:  # right after its bare step: same process state, same GPU clocks
            r["loop"] = time_loop(model_name, args, device)
            print(f"  {model_name}, train_one_epoch: {r['loop']['img_s']:.1f} img/s "
                  f"({r['loop']['epochs']} epochs, {r['loop']['seconds']:.1f} s)", flush=True)

    mm = probe.rates
    mm_best = max(mm)
    results["matmul_gflops"] = mm
    print(f"matmul {args.matmul_size}^3 {str(mm_dtype).replace('torch.', '')}: best {mm_best:.1f} GFLOP/s "
          f"(median {statistics.median(mm):.1f}, min {min(mm):.1f}; {len(mm)} samples between the repeats)")
    header = (f"{'model':<19} {'GFLOP/img':>9} {'steps':>5} {'img/s best':>10} {'median':>7} {'min':>7} "
              f"{'cores':>5} {'GFLOP/s':>8} {'of matmul':>9} {'best/best':>9} {'loader img/s':>12}")
    print(header)
    print("-" * len(header))
    for model_name in args.models:
        r = results[model_name]
        best = max(r["rates"])
        gflops = best * 3 * r["flops"] / 1e9  # forward + backward ~ 3x forward
        r.update(best=best, gflops=gflops, best_vs_best=gflops / mm_best,
                 fraction=statistics.median(r["paired"]))
        print(f"{model_name:<19} {r['flops'] / 1e9:>9.3f} {r['steps']:>5} {best:>10.1f} "
              f"{statistics.median(r['rates']):>7.1f} {min(r['rates']):>7.1f} "
              f"{statistics.median(r['cores']):>5.2f} {gflops:>8.1f} {r['fraction']:>9.2f} "
              f"{r['best_vs_best']:>9.2f} {r['loader_img_s']:>12.0f}")
    print("(of matmul: median over repeats of the repeat's GFLOP/s / the better matmul sample just\n"
          " before and after it; best/best: best repeat vs best matmul sample of the whole run)")
    if cpu:
        print("(cores: process CPU-seconds per wall-second while timing; under the thread count "
              "means other jobs had the cores)")

    if loops:
        print(f"\nthe whole loop vs the bare step (train_one_epoch over {args.epoch_images:,} random images per "
              f"epoch, batch {args.batch_size}, whole epochs for >= {args.epoch_seconds:g} s after a warm-up):")
        header = f"{'model':<19} {'step img/s':>10} {'loop img/s':>10} {'loop/step':>9} {'epochs':>6} {'seconds':>7}"
        print(header)
        print("-" * len(header))
        for model_name in args.models:
            r = results[model_name]
            r["loop_vs_step"] = r["loop"]["img_s"] / r["best"]
            print(f"{model_name:<19} {r['best']:>10.0f} {r['loop']['img_s']:>10.0f} {r['loop_vs_step']:>9.2f} "
                  f"{r['loop']['epochs']:>6} {r['loop']['seconds']:>7.1f}")
        worst = min(results[m]["loop_vs_step"] for m in args.models)
        print(f"loop_vs_step_min: {worst:.2f} (target 0.85)")

    key = "BaselineCNN" if "BaselineCNN" in results else args.models[0]
    print(f"fraction_of_matmul_peak: {results[key]['fraction']:.2f}")
    return results


if __name__ == "__main__":
    main()
