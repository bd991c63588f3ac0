"""Writes the bad-input corpus of cxr-msn (see README.md here): odd, broken and hostile
image, model and table files, each listed in cases.json with the message expected for it.

Run from the repository root with Pillow installed (requirements.txt):
    python tests/bad-inputs/make_corpus.py
The files are committed; this script documents how they were made and remakes them.
"""

import gzip
import io
import json
import struct
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pil_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def gradient(size=64, mode="L") -> Image.Image:
    image = Image.new("L", (size, size))
    image.putdata([(x * 4 + y) % 256 for y in range(size) for x in range(size)])
    return image.convert(mode)


# ---- DICOM, written by hand (no pydicom needed) --------------------------------------

def element(group, elem, vr, value: bytes) -> bytes:
    """An explicit VR little endian data element."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "OW") else b" "
    tag = struct.pack("<HH", group, elem) + vr.encode()
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return tag + b"\0\0" + struct.pack("<I", len(value)) + value
    return tag + struct.pack("<H", len(value)) + value


def dicom(transfer_syntax: str, rows=64, columns=64, pixels=None, big_endian_body=False,
          encapsulated=False, with_pixels=True) -> bytes:
    meta = (
        element(0x0002, 0x0001, "OB", b"\0\1")
        + element(0x0002, 0x0002, "UI", b"1.2.840.10008.5.1.4.1.1.1.1")
        + element(0x0002, 0x0003, "UI", b"1.2.826.0.1.3680043.10.1234.1")
        + element(0x0002, 0x0010, "UI", transfer_syntax.encode())
    )
    meta = element(0x0002, 0x0000, "UL", struct.pack("<I", len(meta))) + meta
    body = (
        element(0x0008, 0x0060, "CS", b"DX")
        + element(0x0010, 0x0040, "CS", b"F")
        + element(0x0028, 0x0002, "US", struct.pack("<H", 1))
        + element(0x0028, 0x0004, "CS", b"MONOCHROME2")
        + element(0x0028, 0x0010, "US", struct.pack("<H", rows))
        + element(0x0028, 0x0011, "US", struct.pack("<H", columns))
        + element(0x0028, 0x0100, "US", struct.pack("<H", 16))
        + element(0x0028, 0x0101, "US", struct.pack("<H", 12))
        + element(0x0028, 0x0102, "US", struct.pack("<H", 11))
        + element(0x0028, 0x0103, "US", struct.pack("<H", 0))
    )
    if with_pixels:
        if encapsulated:
            frame = pixels if pixels is not None else b"\xff\xd8\xff\xf7" + b"\0" * 60
            items = (struct.pack("<HHI", 0xFFFE, 0xE000, 0)
                     + struct.pack("<HHI", 0xFFFE, 0xE000, len(frame)) + frame
                     + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
            body += struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + b"\xff\xff\xff\xff" + items
        else:
            data = pixels if pixels is not None else bytes(rows * columns * 2)
            body += element(0x7FE0, 0x0010, "OW", data)
    if big_endian_body:
        # Only the transfer syntax matters: the reader must refuse before it parses the body.
        pass
    return b"\0" * 128 + b"DICM" + meta + body


# ---- the cases ------------------------------------------------------------------------

cases = []


def case(path: str, data: bytes, kind: str, expect: str, note: str, **extra):
    """A file, how it is fed (image, model, table) and what must be said about it.
    `expect` is "ok" or a piece of text the error message must contain."""
    target = HERE / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    cases.append({"file": path, "kind": kind, "expect": expect, "note": note, **extra})


good_png = pil_bytes(gradient(), "PNG")
good_jpg = pil_bytes(gradient(), "JPEG", quality=90)

# Images: what the trainer (predict, data --check-images, the loader) and the page read.
case("images/empty.png", b"", "image", "the image file is empty (0 bytes)", "zero bytes")
case("images/truncated.png", good_png[: len(good_png) // 2], "image", "PNG data is truncated or corrupt",
     "the first half of a PNG")
case("images/truncated.jpg", good_jpg[: len(good_jpg) // 2], "image", "JPEG data is truncated or corrupt",
     "the first half of a JPEG")
corrupt = bytearray(good_png)
idat = corrupt.index(b"IDAT")
corrupt[idat + 10] ^= 0xFF
case("images/bad-checksum.png", bytes(corrupt), "image", "PNG data is truncated or corrupt",
     "one flipped byte in the compressed pixels (CRC mismatch)")
case("images/text.png", b"patient list\nsmith,67,F\n", "image", "unrecognised image format",
     "a text file named .png")
case("images/document.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n", "image",
     "unrecognised image format", "a PDF named .jpg")
case("images/page.dcm", b"<!doctype html><html><body>404</body></html>", "image",
     "unrecognised image format", "an HTML error page saved as .dcm")
ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
case("images/declares-huge.png", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b""),
     "image", "100000x100000", "57 bytes declaring 100000 x 100000 pixels (a decompression bomb)")
sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60000, 60000, 1) + b"\x01\x11\x00"
case("images/declares-huge.jpg", b"\xff\xd8" + sof + b"\xff\xd9", "image", "60000x60000",
     "a JPEG header declaring 60000 x 60000 pixels")
case("images/too-wide.png", pil_bytes(Image.new("L", (20000, 16)), "PNG"), "image", "20000x16",
     "a real 20000 x 16 image, wider than the 16384-pixel limit")
case("images/one-pixel.png", pil_bytes(Image.new("L", (1, 1), 128), "PNG"), "image",
     "1x1 pixels, too small to be a radiograph", "a single pixel")
case("images/cmyk.jpg", pil_bytes(gradient(mode="CMYK"), "JPEG"), "image", "CMYK",
     "a CMYK JPEG (print colour space)")
case("images/palette.png", pil_bytes(gradient().convert("P"), "PNG"), "image", "ok",
     "a palette PNG: read through its palette")
case("images/grey-16bit.png", pil_bytes(gradient().convert("I;16"), "PNG"), "image", "ok",
     "a 16-bit grey PNG")
case("images/rgba.png", pil_bytes(gradient(mode="RGBA"), "PNG"), "image", "ok",
     "an RGBA PNG: alpha is dropped")
case("images/jpeg-ls.dcm", dicom("1.2.840.10008.1.2.4.80", encapsulated=True), "image",
     "1.2.840.10008.1.2.4.80", "a DICOM compressed with JPEG-LS (not readable in pure Rust)")
case("images/big-endian.dcm", dicom("1.2.840.10008.1.2.2"), "image", "1.2.840.10008.1.2.2",
     "a DICOM in the retired explicit VR big endian syntax")
case("images/no-pixels.dcm", dicom("1.2.840.10008.1.2.1", with_pixels=False), "image",
     "DICOM file has no pixel data", "a DICOM without Pixel Data (a report)")
case("images/declares-huge.dcm", dicom("1.2.840.10008.1.2.1", rows=60000, columns=60000, pixels=b"\0" * 64),
     "image", "60000x60000", "a DICOM declaring 60000 x 60000 pixels with 64 bytes of data")
sample = (ROOT / "static/samples/rg1-adult-pa.dcm").read_bytes()
case("images/truncated.dcm", sample[: len(sample) * 6 // 10], "image", "truncated",
     "a real DICOM cut at 60 %")
case("images/good.dcm", dicom("1.2.840.10008.1.2.1", pixels=bytes(range(256)) * 32), "image", "ok",
     "a small valid DICOM (the control case)")

# Model files: what inspect, predict and the page's model picker read.
model = (ROOT / "static/model.safetensors").read_bytes()
case("models/empty.safetensors", b"", "model", "not a readable cxr-msn model file", "zero bytes")
header_end = 8 + struct.unpack("<Q", model[:8])[0]
case("models/truncated.safetensors", model[: header_end + 65536], "model", "not a readable cxr-msn model file",
     "a model file cut 64 KiB into its weights (an interrupted download)")
case("models/image.safetensors", good_png, "model", "not a readable cxr-msn model file",
     "a PNG named .safetensors")


def with_header(original: bytes, change, keep=3) -> bytes:
    """`original` (a safetensors file) cut to its first `keep` tensors (in the order of
    their data), its JSON header then changed by `change`. The cut keeps these files small
    (about 160 kB rather than the model's megabytes); what each case tests is its header."""
    n = struct.unpack("<Q", original[:8])[0]
    header = json.loads(original[8 : 8 + n])
    data = original[8 + n :]
    tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    kept, body = {}, b""
    for name in tensors[:keep]:
        start, end = header[name]["data_offsets"]
        kept[name] = dict(header[name], data_offsets=[len(body), len(body) + end - start])
        body += data[start:end]
    header = {"__metadata__": header.get("__metadata__", {}), **kept}
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def set_meta(edit):
    def change(header):
        meta = json.loads(header["__metadata__"]["cxr_msn.meta"])
        edit(meta)
        header["__metadata__"]["cxr_msn.meta"] = json.dumps(meta)
    return change


def drop_meta_field(meta):
    del meta["config"]


def declare_huge(meta):
    config = meta["config"]
    config["vit"].update(dim=65536, depth=1000, heads=512, image_size=16384)
    config["head"]["d_in"] = 65536


def foreign(header):
    header["__metadata__"] = {"format": "pt"}


case("models/bad-metadata.safetensors", with_header(model, set_meta(drop_meta_field)), "model",
     "model file metadata is malformed", "our container with a metadata record missing its config (and most tensors)")
case("models/foreign.safetensors", with_header(model, foreign), "model", "not a cxr-msn model file",
     "weights from another tool (no cxr-msn metadata; a few tensors)")
case("models/declares-huge.safetensors", with_header(model, set_meta(declare_huge)), "model",
     "do not match the architecture", "metadata declaring a 65536-wide, 1000-block ViT over a small model's first tensors")


def with_nan(original: bytes) -> bytes:
    """`with_header`'s cut of `original` with the first value of its data a quiet NaN."""
    cut = with_header(original, lambda header: None)
    n = struct.unpack("<Q", cut[:8])[0]
    header = json.loads(cut[8 : 8 + n])
    first = min((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])
    nan = {"F32": struct.pack("<I", 0x7FC00000), "F16": struct.pack("<H", 0x7E00)}[first["dtype"]]
    return cut[: 8 + n] + nan + cut[8 + n + len(nan) :]


case("models/nan-weight.safetensors", with_nan(model), "model", "NaN or infinite",
     "a weight that is NaN (a damaged file, or a run that diverged; its first tensors only)")

# Tables: `cxr-msn data` with the given format.
def table(path, text, fmt, expect, note, encoding="utf-8"):
    data = text.encode(encoding) if isinstance(text, str) else text
    case(path, data, "table", expect, note, format=fmt)


table("tables/manifest-no-path-column.csv", "image,Pneumonia\na.png,1\n", "manifest", "path",
      "the image column is missing")
table("tables/manifest-utf16.csv", "path,Pneumonia\na.png,1\n", "manifest", "UTF-16 byte-order mark",
      "saved as UTF-16 by a spreadsheet", encoding="utf-16")
table("tables/manifest-latin1.csv", "path,Pneumonia\nradiograf\u00eda.png,1\n", "manifest", "row 2, field 1 is not UTF-8 text",
      "a Latin-1 file name", encoding="latin-1")
table("tables/manifest-impossible-age.csv", "path,Pneumonia,age,sex\na.png,1,213,F\n", "manifest", "213",
      "an age of 213 years")
table("tables/manifest-bad-label.csv", "path,Pneumonia\na.png,yes\n", "manifest", "yes",
      "a label written as a word")
table("tables/manifest-ragged.csv", "path,Pneumonia\na.png,1,0,extra\n", "manifest", "row 2",
      "a row with too many fields")
table("tables/manifest-empty.csv", "", "manifest", "the file is empty", "zero bytes")
table("tables/manifest-header-only.csv", "path,Pneumonia\n", "manifest", "no usable images",
      "a header and nothing else")
table("tables/manifest-excel-bom.csv", "\ufeffpath,Pneumonia,age\nmissing.png,1,45\n", "manifest", "ok",
      "UTF-8 with the byte-order mark Excel writes")
table("tables/nih-unknown-finding.csv",
      "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
      "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
      "00000001_000.png,Flu,0,1,58,M,PA,2682,2749,0.143,0.143\n", "nih", "Flu", "a finding NIH does not have")
table("tables/nih-impossible-age.csv",
      "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
      "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
      "00000001_000.png,No Finding,0,1,413,M,PA,2682,2749,0.143,0.143\n", "nih", "413",
      "an age of 413 (the 2017 file has a few)")
table("tables/chexpert-bad-label.csv",
      "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
      "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
      "Pleural Effusion,Pleural Other,Fracture,Support Devices\n"
      "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,"
      "1.0,,,,,,,2.0,,0.0,,,,1.0\n", "chexpert", "2.0", "a label of 2.0")

# The MIMIC-CXR to MIMIC-IV linkage: `cxr-msn ehr` with an impossible scan date.
link = "tables/mimic-impossible-date"
case(f"{link}/mimic-cxr/mimic-cxr-2.0.0-metadata.csv",
     ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
      "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
      "PatientOrientationCodeSequence_CodeMeaning\n"
      "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21801345,213014.531,"
      "CHEST (PA AND LAT),postero-anterior,Erect\n").encode(),
     "ehr", "21801345", "a StudyDate with month 13 and day 45", mimic_iv=f"{link}/mimic-iv")
case(f"{link}/mimic-iv/hosp/patients.csv",
     b"subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n10000032,F,52,2180,2014 - 2016,\n",
     "part", "", "part of the case above")
case(f"{link}/mimic-iv/hosp/admissions.csv",
     b"subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,"
     b"admission_location,discharge_location,insurance,language,marital_status,race,edregtime,"
     b"edouttime,hospital_expire_flag\n", "part", "", "part of the case above")
case(f"{link}/mimic-iv/icu/icustays.csv",
     b"subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\n", "part", "",
     "part of the case above")

(HERE / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
print(f"wrote {len(cases)} files")
