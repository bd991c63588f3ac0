#!/usr/bin/env python3
"""The PyTorch side of `scripts/bench`: the same measurements as `cxr-msn bench step`,
`cxr-msn bench infer` and `cxr-msn bench loader`, each printed as one JSON object with the
same fields (what, device, median_s, min_s, max_s, repeats, peak_rss_mib).

  step    one multimodal MSN pretraining step, the `paper` profile as the model crate
          defines it: timm's ViT (fused attention) with MSN token masking, projection head D -> 4D -> 4D -> D without
          bias before BatchNorm, 1024 frozen prototypes, 15 % of the patches of every anchor
          view masked, f_ehr and g for the EHR, the MSN loss (sharpening 0.25, 3 Sinkhorn
          iterations, me-max), AdamW (lr 1e-4, decoupled weight decay 1e-3), EMA 0.996
          before the forward; random views, read the loss back.
  infer   timm's VisionTransformer of the same size, [CLS] features, inference mode; with
          --onnx, the graph of our own timed model in ONNX Runtime instead.
  loader  PIL decode + torchvision views (RandomResizedCrop 224 x 2 and 96 x N, flips,
          ToTensor, Normalize), batched; one thread, or a DataLoader with a worker per core.
  onnx    a cxr-msn encoder rebuilt in timm and exported by torch.onnx.export (for
          scripts/bench-browser).
  ort     that graph against `cxr-msn export-onnx`'s in ONNX Runtime's CPU provider.
"""

import argparse
import copy
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "shared" / "tests" / "reference"))
from make_fixtures import ProjectionHead, msn_loss, resize_pos  # noqa: E402

# (dim, heads) of the model crate's presets; all have 12 blocks, patch 16, 224 px.
PRESETS = {"tiny": (192, 6), "tiny-3h": (192, 3), "small": (384, 6), "base": (768, 12)}
EHR_WIDTH = {"demographic": 3, "none": 0}


def peak_rss_mib():
    """This process's peak resident set: since its start, or since reset_peak_rss()."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss():
    """Brings peak_rss_mib() down to the current resident set (Linux 4.0 and later), as
    `cxr-msn bench loader` does between its settings; returns whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def pss_mib(pid):
    """A process's proportional set size (shared pages divided among their sharers)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def child_pids(pid):
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def peak_pss_mib_during(fn, interval_s=0.005):
    """Runs fn() while a thread samples the summed proportional set size of this process
    and its children (a DataLoader's workers, which share the pages they were forked with),
    and returns the highest sum seen. A peak shorter than the interval can be missed, so
    this may understate the true peak, never overstate it."""
    import threading

    me, peak, done = os.getpid(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], pss_mib(me) + sum(pss_mib(c) for c in child_pids(me)))
            done.wait(interval_s)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return peak[0]


def report(what, times, device="CPU (PyTorch)"):
    times = sorted(times)
    print(json.dumps({
        "what": what,
        "device": f"{device} {torch.__version__}, {torch.get_num_threads()} threads",
        "median_s": times[len(times) // 2],
        "min_s": times[0],
        "max_s": times[-1],
        "repeats": len(times),
        "peak_rss_mib": peak_rss_mib(),
    }))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_keep(batch, patches, ratio, device):
    """Indices of the kept patches per row: a random (1 - ratio) of them, sorted."""
    keep = patches - int(round(patches * ratio))
    return torch.rand(batch, patches, device=device).argsort(dim=1)[:, :keep].sort(dim=1).values


def masked_vit(dim, heads):
    """timm's VisionTransformer (fused attention) with MSN's token masking: the patch tokens
    of a view, plus its (resized) position embedding, are gathered by `keep` before the
    blocks; returns the [CLS] features."""
    import timm.models.vision_transformer as vt

    class MaskedViT(vt.VisionTransformer):
        def forward(self, x, keep=None):
            b, s = x.shape[0], x.shape[-1]
            pos = resize_pos(self.pos_embed, s // 16)
            x = self.patch_embed(x) + pos[:, 1:]
            if keep is not None:
                x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            x = torch.cat([(self.cls_token + pos[:, :1]).expand(b, -1, -1), x], dim=1)
            return self.norm(self.blocks(x))[:, 0]

    model = MaskedViT(img_size=224, patch_size=16, embed_dim=dim, depth=12, num_heads=heads,
                      num_classes=0)
    model.patch_embed.strict_img_size = False  # 96 px focal views
    return model


def step(args):
    device = torch.device(args.device)
    torch.manual_seed(0)
    dim, heads = PRESETS[args.preset]
    ehr_in = EHR_WIDTH[args.ehr]
    b, focal = args.batch_size, args.focal_views
    vit = masked_vit(dim, heads).to(device)
    head = ProjectionHead(dim, 4 * dim, dim, bias_before_bn=False).to(device)
    f_ehr = nn.Linear(ehr_in, 128).to(device) if ehr_in else None
    g = nn.Linear(dim + 128, dim).to(device) if ehr_in else None
    prototypes = torch.empty(1024, dim, device=device).uniform_(-1 / math.sqrt(dim), 1 / math.sqrt(dim))
    target_vit, target_head = copy.deepcopy(vit), copy.deepcopy(head)
    for p in list(target_vit.parameters()) + list(target_head.parameters()):
        p.requires_grad_(False)
    trained = [p for m in (vit, head, f_ehr, g) if m is not None for p in m.parameters()]
    optim = torch.optim.AdamW(trained, lr=1e-4, weight_decay=1e-3, eps=1e-8)
    amp = args.amp and device.type == "cuda"

    def one_step():
        with torch.no_grad():  # EMA before the forward (paper profile)
            for t, a in zip(list(target_vit.parameters()) + list(target_head.parameters()),
                            list(vit.parameters()) + list(head.parameters())):
                t.mul_(0.996).add_(a, alpha=0.004)
        target = torch.rand(b, 3, 224, 224, device=device) * 2 - 1
        anchor = torch.rand(b, 3, 224, 224, device=device) * 2 - 1
        focal_views = torch.rand(focal * b, 3, 96, 96, device=device) * 2 - 1
        ehr = torch.rand(b, ehr_in, device=device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            with torch.no_grad():
                z_t = target_head(target_vit(target))
            views = [vit(anchor, random_keep(b, 196, 0.15, device))]
            if focal:
                views.append(vit(focal_views, random_keep(focal * b, 36, 0.15, device)))
            v = torch.cat(views, dim=0)
            if ehr_in:
                e = f_ehr(ehr).repeat((1 + focal, 1))
                v = g(torch.cat([v, e], dim=1))
            z_a = head(v)
        total, _, _, _, _ = msn_loss(z_a.float(), z_t.float(), prototypes, 0.1, 0.25, 3, 1.0, 0.0)
        optim.zero_grad(set_to_none=True)
        total.backward()
        optim.step()
        return total.item()  # read back, as ours does

    times = []
    for i in range(args.warmup + args.repeats):
        sync(device)
        start = time.perf_counter()
        one_step()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    what = (f"pretraining step, ViT-{args.preset} paper profile, EHR {args.ehr}, batch {b} x "
            f"(2 x 224 px + {focal} x 96 px){', f16 autocast' if amp else ''}")
    report(what, times, "CUDA (PyTorch)" if device.type == "cuda" else "CPU (PyTorch)")


def ort_session(path, threads):
    """An ONNX Runtime session on the CPU provider with `threads` threads for each operator."""
    import onnxruntime as rt

    options = rt.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return rt.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def infer_onnx(args):
    """`infer` of the ONNX graph `cxr-msn bench infer --onnx` wrote (the model our side
    times) in ONNX Runtime's CPU provider, one thread per core; the grey plane in."""
    import numpy as np
    import onnxruntime as rt

    threads = os.cpu_count() or 1
    session = ort_session(args.onnx, threads)
    rng = np.random.default_rng(0)
    times = []
    for i in range(args.warmup + args.repeats):
        images = rng.random((args.batch_size, 1, 224, 224), dtype=np.float32)
        start = time.perf_counter()
        session.run(["embedding"], {"image": images})
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({
        "what": f"inference, ViT-{args.preset} at 224 px, batch {args.batch_size}",
        "device": f"CPU (ONNX Runtime {rt.__version__}), {threads} threads",
        "median_s": times[len(times) // 2],
        "min_s": times[0],
        "max_s": times[-1],
        "repeats": len(times),
        # This process also holds PyTorch (imported above), which ONNX Runtime does not need.
        "peak_rss_mib": None,
    }))


def infer(args):
    if args.onnx:
        return infer_onnx(args)
    import timm.models.vision_transformer as vt

    device = torch.device(args.device)
    torch.manual_seed(0)
    dim, heads = PRESETS[args.preset]
    model = vt.VisionTransformer(img_size=224, patch_size=16, embed_dim=dim, depth=12,
                                 num_heads=heads, num_classes=0).to(device).eval()
    amp = args.amp and device.type == "cuda"
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        for i in range(args.warmup + args.repeats):
            images = torch.rand(args.batch_size, 3, 224, 224, device=device) * 2 - 1
            sync(device)
            start = time.perf_counter()
            model(images).float().cpu()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    report(f"inference, ViT-{args.preset} at 224 px, batch {args.batch_size}{', f16' if amp else ''}",
           times, "CUDA (PyTorch)" if device.type == "cuda" else "CPU (PyTorch)")


class MsnViews(torch.utils.data.Dataset):
    """Each image: decoded by PIL as grey, a 224 target, a 224 anchor and N 96 focal views."""

    def __init__(self, paths, focal):
        from torchvision import transforms as T

        norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        grey3 = T.Lambda(lambda t: t.expand(3, -1, -1))

        def view(size, scale):
            return T.Compose([T.RandomResizedCrop(size, scale=scale, antialias=True),
                              T.RandomHorizontalFlip(), T.ToTensor(), grey3, norm])

        self.paths, self.focal = paths, focal
        self.large, self.small = view(224, (0.3, 1.0)), view(96, (0.05, 0.3))

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("L")
            return (self.large(im), self.large(im), torch.stack([self.small(im) for _ in range(self.focal)]))


def loader(args):
    import csv

    with open(args.data, newline="") as f:
        rows = list(csv.DictReader(f))
    base = Path(args.data).resolve().parent
    paths = [str(base / r["path"]) for r in rows][: args.count]
    n = len(paths) // args.batch_size * args.batch_size
    paths = paths[:n]
    data = MsnViews(paths, args.focal_views)
    # Peak memory: on one thread this process's peak resident set while the setting ran, as
    # ours is measured; with workers, the summed proportional set size of this process and
    # its workers, sampled through one more, untimed epoch (a resident set summed over
    # forked processes would count their shared pages once per process).
    results = []
    for threads, label in [(1, "1 thread"), (os.cpu_count(), "all cores")]:
        torch.set_num_threads(1)
        workers = 0 if threads == 1 else threads
        if workers == 0:
            reset_peak_rss()  # with workers the peak is sampled instead (below)
        batches = torch.utils.data.DataLoader(data, batch_size=args.batch_size, num_workers=workers,
                                              persistent_workers=workers > 0)

        def epoch():
            for _ in batches:
                pass

        times = []
        for i in range(1 + args.repeats):
            start = time.perf_counter()
            epoch()
            if i >= 1:
                times.append(time.perf_counter() - start)
        times.sort()
        peak = peak_rss_mib() if workers == 0 else peak_pss_mib_during(epoch)
        del batches  # the workers end here
        results.append({"what": f"loader, {label}", "images": n, "median_s": times[len(times) // 2],
                        "min_s": times[0], "max_s": times[-1], "repeats": len(times),
                        "device": f"PIL + torchvision {torch.__version__}", "peak_rss_mib": peak})
    print(json.dumps(results))


def onnx(args):
    """The encoder of a cxr-msn model, exported by `cxr-msn export-torch --names timm`, as
    timm's VisionTransformer and then ONNX: ONNX Runtime Web runs the very model the page
    runs."""
    import timm.models.vision_transformer as vt
    from safetensors.torch import load_file

    state = load_file(args.weights)
    dim = state["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    model = vt.VisionTransformer(img_size=224, patch_size=16, embed_dim=dim, depth=depth,
                                 num_heads=args.heads, num_classes=0).eval()
    model.load_state_dict(state)
    torch.onnx.export(model, (torch.rand(1, 3, 224, 224),), args.out, dynamo=False,
                      input_names=["images"], output_names=["features"], opset_version=17,
                      dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    print(json.dumps({"onnx": args.out, "dim": dim, "depth": depth, "heads": args.heads}))


def ort_compare(args):
    """`cxr-msn export-onnx`'s graph (`--ours`) against PyTorch's export of the same model
    (`--theirs`, from `onnx` above) in ONNX Runtime's CPU provider, as Python users run it:
    the largest difference between their embeddings of the same images (ours takes the grey
    plane, PyTorch's the normalised channels), and their times in alternating rounds at
    batch 1 and 32, on one thread and on every core."""
    import numpy as np
    import onnxruntime as rt

    mean = np.array([float(v) for v in args.mean.split(",")], np.float32)[None, :, None, None]
    std = np.array([float(v) for v in args.std.split(",")], np.float32)[None, :, None, None]
    grey = np.random.default_rng(0).random((32, 1, 224, 224), dtype=np.float32)
    channels = (np.repeat(grey, mean.shape[1], axis=1) - mean) / std
    results = []
    for threads in sorted({1, os.cpu_count() or 1}):
        ours, theirs = ort_session(args.ours, threads), ort_session(args.theirs, threads)
        ours_in, theirs_in = ours.get_inputs()[0].name, theirs.get_inputs()[0].name
        a = ours.run(["embedding"], {ours_in: grey[:2]})[0]
        b = theirs.run(None, {theirs_in: channels[:2]})[0]
        difference = float(np.abs(a - b).max())
        for batch in (1, 32):
            runs = 20 if batch == 1 else 2

            def timed(session, feeds):
                start = time.perf_counter()
                for _ in range(runs):
                    session.run(None, feeds)
                return (time.perf_counter() - start) / runs

            ours_feeds = {ours_in: grey[:batch]}
            theirs_feeds = {theirs_in: channels[:batch]}
            timed(ours, ours_feeds)  # warm-up
            timed(theirs, theirs_feeds)
            rounds = [(timed(ours, ours_feeds), timed(theirs, theirs_feeds)) for _ in range(args.rounds)]
            ratios = sorted(o / t for o, t in rounds)
            results.append({
                "what": f"ONNX Runtime {rt.__version__} (CPU), batch {batch}, {threads} thread(s)",
                "ours_ms": 1e3 * sorted(o for o, _ in rounds)[len(rounds) // 2],
                "pytorch_export_ms": 1e3 * sorted(t for _, t in rounds)[len(rounds) // 2],
                "ratio": ratios[len(ratios) // 2], "ratio_min": ratios[0], "ratio_max": ratios[-1],
                "rounds": args.rounds, "largest_difference": difference,
            })
    print(json.dumps(results))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("step")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--ehr", default="demographic", choices=sorted(EHR_WIDTH))
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--focal-views", type=int, default=10)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--device", default="cpu")
    s.add_argument("--amp", action="store_true", help="f16 autocast on CUDA (the paper's precision)")
    i = sub.add_parser("infer")
    i.add_argument("--preset", default="tiny")
    i.add_argument("--batch-size", type=int, default=1)
    i.add_argument("--repeats", type=int, default=10)
    i.add_argument("--warmup", type=int, default=2)
    i.add_argument("--device", default="cpu")
    i.add_argument("--amp", action="store_true")
    i.add_argument("--onnx", help="time this graph (cxr-msn bench infer --onnx) in ONNX Runtime instead")
    l = sub.add_parser("loader")
    l.add_argument("--data", required=True, help="a manifest CSV (path column)")
    l.add_argument("--count", type=int, default=256)
    l.add_argument("--batch-size", type=int, default=32)
    l.add_argument("--focal-views", type=int, default=10)
    l.add_argument("--repeats", type=int, default=3)
    o = sub.add_parser("onnx")
    o.add_argument("--weights", required=True, help="safetensors from cxr-msn export-torch --names timm")
    o.add_argument("--heads", type=int, required=True)
    o.add_argument("--out", required=True)
    r = sub.add_parser("ort")
    r.add_argument("--ours", required=True, help="cxr-msn export-onnx's graph")
    r.add_argument("--theirs", required=True, help="PyTorch's export of the same model (onnx)")
    r.add_argument("--mean", required=True, help="the model's normalisation, comma-separated")
    r.add_argument("--std", required=True)
    r.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    {"step": step, "infer": infer, "loader": loader, "onnx": onnx, "ort": ort_compare}[args.command](args)


if __name__ == "__main__":
    main()
