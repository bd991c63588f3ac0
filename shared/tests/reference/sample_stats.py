#!/usr/bin/env python3
"""Statistics of the sample images of shared/tests/data/samples, decoded by independent
decoders (libjpeg-turbo and libpng via imagecodecs), for shared/tests/decode.rs.

For each image: width, height, bit depth, the number of distinct levels, the mean of the
intensities scaled to [0, 1] and the scaled values of a few pixels. 8-bit images scale as
v / 255; deeper ones are stretched from their darkest to their brightest value,
(v - min) / (max - min), as cxr-msn decodes them (shared/src/decode.rs).

Environment: numpy==2.4.6, imagecodecs==2026.3.6. Usage: python sample_stats.py
It rewrites shared/tests/data/samples/reference.json.
"""

import json
from pathlib import Path

import imagecodecs
import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
# (x, y) positions checked pixel by pixel.
POINTS = [(0, 0), (100, 200), (400, 300), (500, 600), (900, 640)]


def main():
    out = {}
    for path in sorted(SAMPLES.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".png":
            pixels = imagecodecs.png_decode(data)
        elif path.suffix == ".jpeg":
            pixels = imagecodecs.jpeg8_decode(data)
        else:
            continue
        assert pixels.ndim == 2, f"{path.name} is not grey"
        bits = 16 if pixels.dtype == np.uint16 else 8
        values = pixels.astype(np.float64)
        if bits == 8:
            scaled = values / 255.0
        else:
            scaled = (values - values.min()) / (values.max() - values.min())
        h, w = pixels.shape
        out[path.name] = {
            "width": w,
            "height": h,
            "bit_depth": bits,
            "distinct_levels": int(np.unique(pixels).size),
            "mean": float(scaled.mean()),
            "pixels": [[x, y, float(scaled[y, x])] for x, y in POINTS if x < w and y < h],
        }
    (SAMPLES / "reference.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
