#!/usr/bin/env python3
"""Runs cxr-msn's benchmarks and the PyTorch reference (reference.py) side by side on this
machine and prints Markdown tables of the ratios (ours / PyTorch; below 1 means faster).
Called by scripts/bench, which builds the release binary and installs the reference.

Each measurement runs in a fresh process (so that peak memory is that measurement's) and
reports the median of its timed repetitions after a warm-up. Ours and the reference are
measured in paired rounds, alternately (ours first in odd rounds, the reference first in
even ones), so that a slow spell of a shared machine lands on both sides: each round gives
a ratio, and the tables give the median round's times and ratio with the rounds' range in
brackets, and the highest peak memory of the rounds.
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


def median(values):
    """The median (of an even count, the mean of the middle two)."""
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def spread(values, digits):
    """`median (min-max)` of `values`, or the one value alone."""
    m = f"{median(values):.{digits}f}"
    return m if len(values) == 1 else f"{m} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def paired_rounds(rounds, ours_cmd, ref_cmd):
    """Runs both commands `rounds` times, alternately, ours first in odd rounds; returns
    [(ours' result, the reference's result)] per round."""
    pairs = []
    for i in range(rounds):
        if i % 2 == 0:
            o = run(ours_cmd)
            t = run(ref_cmd)
        else:
            t = run(ref_cmd)
            o = run(ours_cmd)
        pairs.append((o, t))
    return pairs


def rounds_note(rounds):
    return f"{rounds} paired round{'' if rounds == 1 else 's'}"


def times(results):
    """The per-round medians of one side, as `median (min-max)` seconds."""
    return spread([r["median_s"] for r in results], 3)


def peak_mib(results):
    """The highest peak memory of the rounds' results, or ? where none was measured."""
    peaks = [r["peak_rss_mib"] for r in results if r.get("peak_rss_mib") is not None]
    return f"{max(peaks):.0f}" if peaks else "?"


def model_row(pairs):
    """A table row (ours, PyTorch, ours / PyTorch, peak memory) from paired rounds."""
    ours, theirs = [o for o, _ in pairs], [t for _, t in pairs]
    ratio = spread([o["median_s"] / t["median_s"] for o, t in pairs], 2)
    return (f"| {ours[0]['what']} | {times(ours)} | {times(theirs)} | **{ratio}** "
            f"| {peak_mib(ours)} / {peak_mib(theirs)} |")


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
    def by_setting(rows):
        return {r["what"].split(", ", 1)[1]: r for r in rows}

    pairs = [(by_setting(o), by_setting(t))
             for o, t in paired_rounds(a.rounds, [a.bin, "bench", "loader", *args, "--json"],
                                       [*ref, "loader", *args])]
    print(f"| {title} | ours (s/epoch) | PIL + torchvision (s/epoch) | PIL / ours (speed-up) "
          "| peak MiB ours / PIL |")
    print("|---|---|---|---|---|")
    for mine, ref_name in [("1 thread, decode every time", "1 thread"), ("all cores, decode every time", "all cores"),
                           ("all cores, cache warm", "all cores")]:
        ours, theirs = [o[mine] for o, _ in pairs], [t[ref_name] for _, t in pairs]
        ratio = spread([t["median_s"] / o["median_s"] for o, t in zip(ours, theirs)], 2)
        print(f"| {mine} vs {ref_name} | {times(ours)} | {times(theirs)} | **{ratio}x** "
              f"| {peak_mib(ours)} / {peak_mib(theirs)} |")
    print(f"\n{ours[0]['images']} images per epoch; ours: {ours[0]['device']}; "
          f"reference: {theirs[0]['device']}; {rounds_note(a.rounds)}. Peak memory: each setting's "
          "own peak resident set (ours: one process, its threads; PIL on one thread); PIL on all "
          "cores: the summed proportional set size of its process and DataLoader workers, sampled "
          "every 5 ms through an untimed epoch\n")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin", required=True, help="the release cxr-msn binary")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--data", help="manifest CSV of images for the loader comparison")
    p.add_argument("--device", default="cpu",
                   help="cpu; gpu (ours: wgpu; PyTorch: cuda); ndarray (ours: Burn's ndarray "
                        "backend, built with the ndarray feature; PyTorch: cpu)")
    p.add_argument("--only", nargs="*", default=["step", "infer", "infer-ort", "loader", "loader-png"],
                   help="infer-ort: our inference against ONNX Runtime on our model's ONNX graph "
                        "(CPU only); loader: the manifest's images; loader-png: the same as "
                        "NIH-format PNGs")
    p.add_argument("--step-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5,
                   help="timed repetitions per measurement (inference: twice as many)")
    p.add_argument("--rounds", type=int, default=3,
                   help="paired rounds of ours and the reference, alternately")
    a = p.parse_args()
    if a.rounds < 1 or a.repeats < 1:
        p.error("--rounds and --repeats must be at least 1")
    ref = [a.python, str(HERE / "reference.py")]
    torch_device = "cuda" if a.device == "gpu" else "cpu"
    card = f"; GPU: {gpu_name()}" if a.device == "gpu" else ""
    amp = ["--amp"] if a.device == "gpu" else []
    print(f"Machine: {cpu_name()}, {platform.machine()}, {platform.system()}{card}; "
          f"date {datetime.date.today()}; command: scripts/bench {' '.join(sys.argv[1:])}\n")

    if "step" in a.only:
        print("| pretraining step | ours (s) | PyTorch (s) | ours / PyTorch | peak MiB ours / PyTorch |")
        print("|---|---|---|---|---|")
        for preset, batch in [("tiny", a.step_batch)]:
            args = ["--preset", preset, "--batch-size", str(batch), "--repeats", str(a.repeats)]
            pairs = paired_rounds(a.rounds, [a.bin, "bench", "step", *args, "--device", a.device, "--json"],
                                  [*ref, "step", *args, "--device", torch_device] + amp)
            print(model_row(pairs))
        print(f"\nours: {pairs[0][0]['device']}; PyTorch: {pairs[0][1]['device']}; {rounds_note(a.rounds)}\n")

    if "infer" in a.only:
        print("| inference | ours (s) | PyTorch (s) | ours / PyTorch | peak MiB ours / PyTorch |")
        print("|---|---|---|---|---|")
        for preset in ["tiny", "small"]:
            for batch in [1, 32]:
                args = ["--preset", preset, "--batch-size", str(batch), "--repeats", str(a.repeats * 2)]
                pairs = paired_rounds(a.rounds, [a.bin, "bench", "infer", *args, "--device", a.device, "--json"],
                                      [*ref, "infer", *args, "--device", torch_device] + amp)
                print(model_row(pairs))
        print(f"\nours: {pairs[0][0]['device']}; PyTorch: {pairs[0][1]['device']}; {rounds_note(a.rounds)}\n")

    if "infer-ort" in a.only and a.device == "cpu":
        # The very model ours times (`bench infer --onnx` writes it as export-onnx would), in
        # ONNX Runtime's CPU provider: the runtime a user of `cxr-msn export-onnx` would pick.
        print("| inference, against ONNX Runtime | ours (s) | ONNX Runtime (s) | ours / ONNX Runtime | peak MiB ours / ONNX Runtime |")
        print("|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as folder:
            for preset in ["tiny", "small"]:
                onnx = str(Path(folder) / f"{preset}.onnx")
                for batch in [1, 32]:
                    args = ["--preset", preset, "--batch-size", str(batch), "--repeats", str(a.repeats * 2)]
                    ours_cmd = [a.bin, "bench", "infer", *args, "--device", a.device, "--json"]
                    if batch == 1:
                        run([a.bin, "bench", "infer", "--preset", preset, "--repeats", "1",
                             "--device", a.device, "--onnx", onnx, "--json"])
                    pairs = paired_rounds(a.rounds, ours_cmd, [*ref, "infer", *args, "--onnx", onnx])
                    print(model_row(pairs))
        print(f"\nours: {pairs[0][0]['device']}; ONNX Runtime: {pairs[0][1]['device']}; "
              f"{rounds_note(a.rounds)}; ONNX Runtime's memory is not measured (its process also "
              "imports PyTorch)\n")

    if "loader" in a.only and a.data:
        loader_table(a, ref, "data pipeline (decode + 2 x 224 + 10 x 96 views)", a.data)

    if "loader-png" in a.only and a.data:
        with tempfile.TemporaryDirectory() as folder:
            loader_table(a, ref, "the same, the images as NIH-format PNGs (1024 px, 8-bit grey)",
                         nih_format_copies(a.data, folder))


if __name__ == "__main__":
    main()
