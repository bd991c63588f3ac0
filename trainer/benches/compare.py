#!/usr/bin/env python3
"""Runs cxr-msn's benchmarks and the PyTorch reference (reference.py) side by side on this
machine and prints Markdown tables of the ratios (ours / PyTorch; below 1 means faster).
Called by scripts/bench, which builds the release binary and installs the reference.

Every figure is the median of the timed repetitions after a warm-up, in a fresh process
for each measurement (so that peak memory is that measurement's), with ours and the
reference measured alternately in the same run.
"""

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "no NVIDIA GPU"
    except (OSError, subprocess.TimeoutExpired):
        return "no NVIDIA GPU"


def fmt(t):
    return f"{t['median_s']:.3f} ({t['min_s']:.3f}-{t['max_s']:.3f})"


def nih_format_copies(manifest, folder):
    """The manifest's images as NIH ChestX-ray14 stores its own (1024 x 1024, 8-bit grey
    PNG), written into `folder` with PIL; returns the new manifest's path."""
    from PIL import Image

    lines = Path(manifest).read_text().splitlines()
    rows = [lines[0]]
    for i, line in enumerate(lines[1:]):
        path, rest = line.split(",", 1)
        out = Path(folder) / f"{i:05d}.png"
        Image.open(path).convert("L").resize((1024, 1024), Image.BILINEAR).save(out)
        rows.append(f"{out},{rest}")
    new = Path(folder) / "manifest.csv"
    new.write_text("\n".join(rows) + "\n")
    return new


def loader_table(a, ref, title, manifest):
    args = ["--data", str(manifest), "--count", "16", "--batch-size", "8", "--repeats", str(a.repeats)]
    ours = {r["what"].split(", ", 1)[1]: r for r in run([a.bin, "bench", "loader", *args, "--json"])}
    theirs = {r["what"].split(", ", 1)[1]: r for r in run([*ref, "loader", *args])}
    print(f"| {title} | ours (s/epoch) | PIL + torchvision (s/epoch) | PIL / ours (speed-up) |")
    print("|---|---|---|---|")
    for mine, ref_name in [("1 thread, decode every time", "1 thread"), ("all cores, decode every time", "all cores"),
                           ("all cores, cache warm", "all cores")]:
        o, t = ours[mine], theirs[ref_name]
        print(f"| {mine} vs {ref_name} | {fmt(o)} | {fmt(t)} | **{t['median_s'] / o['median_s']:.2f}x** |")
    print(f"\n{o['images']} images per epoch; ours: {o['device']}; reference: {t['device']}\n")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin", required=True, help="the release cxr-msn binary")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--data", help="manifest CSV of images for the loader comparison")
    p.add_argument("--device", default="cpu",
                   help="cpu; gpu (ours: wgpu; PyTorch: cuda); ndarray (ours: Burn's ndarray "
                        "backend, built with the ndarray feature; PyTorch: cpu)")
    p.add_argument("--only", nargs="*", default=["step", "infer", "loader", "loader-png"],
                   help="loader: the manifest's images; loader-png: the same as NIH-format PNGs")
    p.add_argument("--step-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    ref = [a.python, str(HERE / "reference.py")]
    torch_device = "cuda" if a.device == "gpu" else "cpu"
    card = f"; GPU: {gpu_name()}" if a.device == "gpu" else ""
    print(f"Machine: {cpu_name()}, {platform.machine()}, {platform.system()}{card}; "
          f"date {datetime.date.today()}; command: scripts/bench {' '.join(sys.argv[1:])}\n")

    if "step" in a.only:
        print("| pretraining step | ours (s) | PyTorch (s) | ours / PyTorch | peak MiB ours / PyTorch |")
        print("|---|---|---|---|---|")
        for preset, batch in [("tiny", a.step_batch)]:
            args = ["--preset", preset, "--batch-size", str(batch), "--repeats", str(a.repeats)]
            ours = run([a.bin, "bench", "step", *args, "--device", a.device, "--json"])
            theirs = run([*ref, "step", *args, "--device", torch_device] + (["--amp"] if a.device == "gpu" else []))
            print(f"| {ours['what']} | {fmt(ours)} | {fmt(theirs)} | **{ours['median_s'] / theirs['median_s']:.2f}** "
                  f"| {ours['peak_rss_mib']:.0f} / {theirs['peak_rss_mib']:.0f} |")
        print(f"\nours: {ours['device']}; PyTorch: {theirs['device']}\n")

    if "infer" in a.only:
        print("| inference | ours (s) | PyTorch (s) | ours / PyTorch | peak MiB ours / PyTorch |")
        print("|---|---|---|---|---|")
        for preset in ["tiny", "small"]:
            for batch in [1, 32]:
                args = ["--preset", preset, "--batch-size", str(batch), "--repeats", str(a.repeats * 2)]
                ours = run([a.bin, "bench", "infer", *args, "--device", a.device, "--json"])
                theirs = run([*ref, "infer", *args, "--device", torch_device] + (["--amp"] if a.device == "gpu" else []))
                print(f"| {ours['what']} | {fmt(ours)} | {fmt(theirs)} | **{ours['median_s'] / theirs['median_s']:.2f}** "
                      f"| {ours['peak_rss_mib']:.0f} / {theirs['peak_rss_mib']:.0f} |")
        print(f"\nours: {ours['device']}; PyTorch: {theirs['device']}\n")

    if "loader" in a.only and a.data:
        loader_table(a, ref, "data pipeline (decode + 2 x 224 + 10 x 96 views)", a.data)

    if "loader-png" in a.only and a.data:
        with tempfile.TemporaryDirectory() as folder:
            loader_table(a, ref, "the same, the images as NIH-format PNGs (1024 px, 8-bit grey)",
                         nih_format_copies(a.data, folder))


if __name__ == "__main__":
    main()
