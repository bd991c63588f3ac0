#!/usr/bin/env python3
"""Writes the small DICOM fixtures of shared/tests/decode.rs and their reference images.

Source: the real chest radiograph RG1_UNCR.dcm of pydicom-data 1.0.0 (MIT; see
shared/tests/data/samples/ATTRIBUTION.md): 1841x1955, CR, PA, MONOCHROME1, 16 bits
allocated, 15 stored. It is block-averaged 16x16 down to 115x122 and written in every
transfer syntax the Rust decoder supports, plus variants that exercise each step of the
grey pipeline documented in shared/src/decode.rs (masking of the bits above BitsStored,
signed samples, rescale, VOI windows, MONOCHROME1 inversion, colour to grey, dates and
ages).

For each fixture, the reference grey image is computed here with numpy from the integer
samples that were encoded (for lossy codecs: from the samples an independent decoder,
libjpeg-turbo or OpenJPEG, gives back), following the documented rules, and stored as raw
little-endian float32, row-major. manifest.json lists the fixtures, their reference, the
tolerance to compare with and the header fields the decoder must report.

Environment (pinned versions used to write the committed files):
    python 3.11+, numpy==2.4.6, pydicom==3.0.2, imagecodecs==2026.3.6 (libjpeg-turbo 3:
    JPEG baseline and lossless encoders, JPEG decoder), pylibjpeg==2.1.0,
    pylibjpeg-openjpeg==2.6.0 (JPEG 2000 encoder and decoder for pydicom).

Usage:
    python make_dicom_fixtures.py [path/to/RG1_UNCR.dcm]
    (default: /work/shared/data/cxr-samples/rg1-adult-pa/RG1_UNCR.dcm)
It rewrites shared/tests/data/dicom/.
"""

import json
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

SOURCE = Path("/work/shared/data/cxr-samples/rg1-adult-pa/RG1_UNCR.dcm")
OUT = Path(__file__).resolve().parent.parent / "data" / "dicom"
FACTOR = 16
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

# Tolerances of the Rust comparison: lossless codecs must match to float rounding; lossy
# ones are decoded by a different decoder here (libjpeg-turbo, OpenJPEG) than in Rust
# (jpeg-decoder, hayro-jpeg2000), whose IDCT/IDWT rounding may differ by a level or two.
LOSSLESS_TOL = 1e-6


def downsample(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over factor x factor blocks (the ragged edge is cropped), rounded."""
    rows, cols = (s // factor for s in pixels.shape)
    blocks = pixels[: rows * factor, : cols * factor].astype(np.float64)
    blocks = blocks.reshape(rows, factor, cols, factor).mean(axis=(1, 3))
    return np.rint(blocks).astype(np.int64)


# --- the documented grey pipeline (shared/src/decode.rs, "DICOM") -------------------------


def stored_values(raw: np.ndarray, bits_stored: int, high_bit: int, signed: bool, shift: bool):
    """Step 1-2: keep BitsStored bits ending at HighBit, two's complement when signed."""
    raw = raw.astype(np.int64) & 0xFFFF_FFFF
    offset = high_bit + 1 - bits_stored if shift else 0
    v = (raw >> offset) & ((1 << bits_stored) - 1)
    if signed:
        v = np.where(v >> (bits_stored - 1) & 1 == 1, v - (1 << bits_stored), v)
    return v


def voi(m: np.ndarray, window) -> np.ndarray:
    """Step 4: window (center, width, function) or min-max."""
    if window is None:
        lo, hi = m.min(), m.max()
        return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    c, w, function = window
    if function == "LINEAR":
        c2, w2 = c - 0.5, w - 1.0
        y = (m - c2) / w2 + 0.5
        y = np.where(m <= c2 - w2 / 2, 0.0, y)
        return np.where(m > c2 + w2 / 2, 1.0, y)
    if function == "LINEAR_EXACT":
        y = (m - c) / w + 0.5
        y = np.where(m <= c - w / 2, 0.0, y)
        return np.where(m > c + w / 2, 1.0, y)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (m - c) / w))
    raise ValueError(function)


def grey_reference(v, *, slope=1.0, intercept=0.0, window=None, monochrome1=False):
    """Steps 3-5 on stored values v: rescale, VOI, polarity; float64 -> float32."""
    m = v.astype(np.float64) * slope + intercept
    y = voi(m, window)
    if monochrome1:
        y = 1.0 - y
    return y.astype(np.float32)


def luma_reference(rgb: np.ndarray, bits_stored: int) -> np.ndarray:
    """Colour: BT.601 luma over the full scale of BitsStored."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = (0.299 * r + 0.587 * g + 0.114 * b) / ((1 << bits_stored) - 1)
    return np.clip(y, 0.0, 1.0).astype(np.float32)


# --- writing ------------------------------------------------------------------------------


def base_dataset(rows, cols, *, bits_allocated, bits_stored, high_bit, signed, photometric,
                 samples=1, tags=None) -> Dataset:
    """An image data set with the Image Pixel module and the given patient/study tags."""
    ds = Dataset()
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Fixture^RG1"
    ds.PatientID = "RG1-fixture"
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = high_bit
    ds.PixelRepresentation = 1 if signed else 0
    return ds


def file_meta(ds: Dataset, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    return meta


def write_native(path: Path, ds: Dataset, raw: np.ndarray, syntax: str):
    """Native pixel data (raw little-endian samples as given, junk bits included)."""
    ds = ds.copy()
    dtype = "<u2" if ds.BitsAllocated == 16 else "u1"
    ds.PixelData = np.ascontiguousarray(raw).astype(dtype).tobytes()
    ds.file_meta = file_meta(ds, syntax)
    ds.save_as(path, enforce_file_format=True)


def write_encapsulated(path: Path, ds: Dataset, frame: bytes, syntax: str, uid_override=None):
    """One frame in one fragment, empty Basic Offset Table."""
    ds = ds.copy()
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta = file_meta(ds, syntax)
    ds.save_as(path, enforce_file_format=True)
    if uid_override is not None:
        data = path.read_bytes()
        assert len(uid_override) == len(syntax) and data.count(syntax.encode()) == 1
        path.write_bytes(data.replace(syntax.encode(), uid_override.encode()))


def write_compressed(path: Path, ds: Dataset, array: np.ndarray, syntax: str, **kwargs):
    """Compressed by pydicom's encoders (RLE: pydicom's own; JPEG 2000: OpenJPEG)."""
    ds = ds.copy()
    ds.file_meta = file_meta(ds, ExplicitVRLittleEndian)
    ds.compress(syntax, array, **kwargs)
    ds.save_as(path, enforce_file_format=True)


def main():
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    rg1 = pydicom.dcmread(source)
    assert rg1.BitsStored == 15 and rg1.PhotometricInterpretation == "MONOCHROME1"
    small = downsample(rg1.pixel_array & 0x7FFF, FACTOR)  # 15-bit values, shape (122, 115)
    rows, cols = small.shape
    manifest = []

    def add(name, reference, *, syntax, photometric, bits_stored, tol=LOSSLESS_TOL,
            sex=None, age=None, view=None, modality="CR", ref_name=None):
        ref_name = ref_name or f"{name}.f32"
        if reference is not None:
            np.ascontiguousarray(reference, dtype="<f4").tofile(OUT / ref_name)
        ref_shape = np.fromfile(OUT / ref_name, dtype="<f4").size
        h, w = (reference.shape if reference is not None else (rows, cols))
        assert ref_shape == h * w
        manifest.append({
            "file": f"{name}.dcm", "reference": ref_name, "width": int(w), "height": int(h),
            "tolerance": tol, "transfer_syntax": syntax, "photometric": photometric,
            "bits_stored": bits_stored, "sex": sex, "age_years": age, "view": view,
            "modality": modality,
        })

    # A. The radiograph as stored: MONOCHROME1, 15 of 16 bits, no window (min-max), age
    #    string, in every lossless transfer syntax.
    tags_a = {"PatientSex": "F", "PatientAge": "064Y", "ViewPosition": "PA", "Modality": "CR"}
    ds_a = base_dataset(rows, cols, bits_allocated=16, bits_stored=15, high_bit=14,
                        signed=False, photometric="MONOCHROME1", tags=tags_a)
    ref_a = grey_reference(small, monochrome1=True)
    meta_a = dict(photometric="MONOCHROME1", bits_stored=15, sex="F", age=64.0, view="PA")
    write_native(OUT / "a_explicit.dcm", ds_a, small, ExplicitVRLittleEndian)
    add("a_explicit", ref_a, syntax=ExplicitVRLittleEndian, **meta_a)
    for name, syntax in (("a_implicit", ImplicitVRLittleEndian),
                         ("a_deflated", DeflatedExplicitVRLittleEndian)):
        write_native(OUT / f"{name}.dcm", ds_a, small, syntax)
        add(name, None, syntax=syntax, ref_name="a_explicit.f32", **meta_a)
    write_encapsulated(OUT / "a_encapsulated_uncompressed.dcm", ds_a,
                       small.astype("<u2").tobytes(), JPEGLosslessSV1,
                       uid_override=ENCAPSULATED_UNCOMPRESSED)
    add("a_encapsulated_uncompressed", None, syntax=ENCAPSULATED_UNCOMPRESSED,
        ref_name="a_explicit.f32", **meta_a)
    write_compressed(OUT / "a_rle.dcm", ds_a, small.astype(np.uint16), RLELossless)
    add("a_rle", None, syntax=RLELossless, ref_name="a_explicit.f32", **meta_a)
    for name, syntax, predictor in (("a_jpeg_lossless_sv1", JPEGLosslessSV1, 1),
                                    ("a_jpeg_lossless_p14", JPEGLossless, 6)):
        frame = imagecodecs.jpeg8_encode(small.astype(np.uint16), lossless=True,
                                         predictor=predictor, bitspersample=15)
        assert np.array_equal(imagecodecs.jpeg8_decode(frame), small)
        write_encapsulated(OUT / f"{name}.dcm", ds_a, bytes(frame), syntax)
        add(name, None, syntax=syntax, ref_name="a_explicit.f32", **meta_a)
    write_compressed(OUT / "a_j2k_lossless.dcm", ds_a, small.astype(np.uint16),
                     JPEG2000Lossless)
    assert np.array_equal(pydicom.dcmread(OUT / "a_j2k_lossless.dcm").pixel_array, small)
    add("a_j2k_lossless", None, syntax=JPEG2000Lossless, ref_name="a_explicit.f32",
        **meta_a)

    # A lossy: JPEG 2000 irreversible; reference from OpenJPEG's decode.
    write_compressed(OUT / "a_j2k_lossy.dcm", ds_a, small.astype(np.uint16), JPEG2000,
                     j2k_cr=[15])
    lossy = pydicom.dcmread(OUT / "a_j2k_lossy.dcm").pixel_array.astype(np.int64)
    add("a_j2k_lossy", grey_reference(lossy, monochrome1=True), syntax=JPEG2000,
        tol=2e-4, **meta_a)

    # B. MONOCHROME2, 12 of 16 bits with junk in the 4 bits above (must be masked off), a
    #    LINEAR window, age from birth and study dates only (64 completed years).
    v12 = small >> 3
    rng = np.random.default_rng(7)
    junk = rng.integers(0, 16, size=v12.shape) << 12
    tags_b = {"PatientSex": "M", "PatientBirthDate": "19400305", "StudyDate": "20040826",
              "ViewPosition": "AP", "Modality": "DX", "WindowCenter": "2100",
              "WindowWidth": "3000"}
    ds_b = base_dataset(rows, cols, bits_allocated=16, bits_stored=12, high_bit=11,
                        signed=False, photometric="MONOCHROME2", tags=tags_b)
    write_native(OUT / "b_mono2_12bit_window.dcm", ds_b, v12 | junk, ExplicitVRLittleEndian)
    add("b_mono2_12bit_window", grey_reference(v12, window=(2100.0, 3000.0, "LINEAR")),
        syntax=ExplicitVRLittleEndian, photometric="MONOCHROME2", bits_stored=12, sex="M",
        age=64.0, view="AP", modality="DX")

    # C. Signed 12-bit (two's complement, sign-extended into 16 bits), rescale slope 0.5 and
    #    intercept -1024, no window, birth date one day after the study's month-day (63
    #    years), sex O and an unknown view (both must come back as None).
    signed = (small >> 3) - 2048
    tags_c = {"PatientSex": "O", "PatientBirthDate": "19400827", "StudyDate": "20040826",
              "ViewPosition": "OBLIQUE", "Modality": "CR", "RescaleSlope": "0.5",
              "RescaleIntercept": "-1024"}
    ds_c = base_dataset(rows, cols, bits_allocated=16, bits_stored=12, high_bit=11,
                        signed=True, photometric="MONOCHROME2", tags=tags_c)
    ref_c = grey_reference(signed, slope=0.5, intercept=-1024.0)
    meta_c = dict(photometric="MONOCHROME2", bits_stored=12, sex=None, age=63.0, view=None)
    write_native(OUT / "c_signed_rescale.dcm", ds_c, signed & 0xFFFF, ExplicitVRLittleEndian)
    add("c_signed_rescale", ref_c, syntax=ExplicitVRLittleEndian, **meta_c)
    # The same signed frame as JPEG lossless (the 12-bit two's complement pattern) and as
    # signed JPEG 2000.
    frame = imagecodecs.jpeg8_encode((signed & 0xFFF).astype(np.uint16), lossless=True,
                                     predictor=1, bitspersample=12)
    write_encapsulated(OUT / "c_signed_jpeg_lossless.dcm", ds_c, bytes(frame),
                       JPEGLosslessSV1)
    add("c_signed_jpeg_lossless", None, syntax=JPEGLosslessSV1,
        ref_name="c_signed_rescale.f32", **meta_c)
    write_compressed(OUT / "c_signed_j2k_lossless.dcm", ds_c, signed.astype(np.int16),
                     JPEG2000Lossless)
    assert np.array_equal(pydicom.dcmread(OUT / "c_signed_j2k_lossless.dcm").pixel_array,
                          signed)
    add("c_signed_j2k_lossless", None, syntax=JPEG2000Lossless,
        ref_name="c_signed_rescale.f32", **meta_c)

    # D. MONOCHROME1 15-bit with a multi-valued SIGMOID window (the first value counts),
    #    implicit VR.
    tags_d = dict(tags_a, WindowCenter=["15000", "16000"], WindowWidth=["30000", "20000"],
                  VOILUTFunction="SIGMOID")
    ds_d = base_dataset(rows, cols, bits_allocated=16, bits_stored=15, high_bit=14,
                        signed=False, photometric="MONOCHROME1", tags=tags_d)
    write_native(OUT / "d_sigmoid_window.dcm", ds_d, small, ImplicitVRLittleEndian)
    add("d_sigmoid_window",
        grey_reference(small, window=(15000.0, 30000.0, "SIGMOID"), monochrome1=True),
        syntax=ImplicitVRLittleEndian, **meta_a)

    # E. 8-bit MONOCHROME2 JPEG baseline with a LINEAR_EXACT window; reference from
    #    libjpeg-turbo's decode of the same codestream.
    v8 = np.clip(255 - (small >> 7), 0, 255).astype(np.uint8)
    tags_e = {"PatientSex": "F", "PatientAge": "018M", "ViewPosition": "LL",
              "Modality": "CR", "WindowCenter": "128", "WindowWidth": "256",
              "VOILUTFunction": "LINEAR_EXACT"}
    ds_e = base_dataset(rows, cols, bits_allocated=8, bits_stored=8, high_bit=7,
                        signed=False, photometric="MONOCHROME2", tags=tags_e)
    frame = imagecodecs.jpeg8_encode(v8, level=90)
    write_encapsulated(OUT / "e_jpeg_baseline.dcm", ds_e, bytes(frame), JPEGBaseline8Bit)
    decoded = imagecodecs.jpeg8_decode(frame).astype(np.int64)
    add("e_jpeg_baseline", grey_reference(decoded, window=(128.0, 256.0, "LINEAR_EXACT")),
        syntax=JPEGBaseline8Bit, photometric="MONOCHROME2", bits_stored=8, sex="F",
        age=1.5, view="LL", tol=2.0 / 256.0)

    # F. Small RGB, planar configuration 1 (RRR..GGG..BBB), explicit VR: BT.601 luma.
    tiny = downsample(small, 4)
    r = (tiny >> 7).astype(np.uint8)
    rgb = np.stack([r, 255 - r, np.linspace(0, 255, tiny.size).reshape(tiny.shape)
                    .astype(np.uint8)], axis=-1)
    ds_f = base_dataset(*tiny.shape, bits_allocated=8, bits_stored=8, high_bit=7,
                        signed=False, photometric="RGB", samples=3)
    ds_f.PlanarConfiguration = 1
    ds_f.PixelData = np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()
    ds_f.file_meta = file_meta(ds_f, ExplicitVRLittleEndian)
    ds_f.save_as(OUT / "f_rgb_planar.dcm", enforce_file_format=True)
    add("f_rgb_planar", luma_reference(rgb, 8), syntax=ExplicitVRLittleEndian,
        photometric="RGB", bits_stored=8, modality=None)

    # G. 1x1 MONOCHROME2 8-bit: a flat image is all 0 by the min-max rule.
    ds_g = base_dataset(1, 1, bits_allocated=8, bits_stored=8, high_bit=7, signed=False,
                        photometric="MONOCHROME2")
    write_native(OUT / "g_1x1.dcm", ds_g, np.array([[7]]), ExplicitVRLittleEndian)
    add("g_1x1", np.zeros((1, 1), np.float32), syntax=ExplicitVRLittleEndian,
        photometric="MONOCHROME2", bits_stored=8, modality=None)

    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(manifest)} fixtures to {OUT}, {total} bytes in all")


if __name__ == "__main__":
    main()
