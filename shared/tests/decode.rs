//! Image decoding against independent references: DICOM fixtures written and decoded by
//! pydicom/numpy (tests/reference/make_dicom_fixtures.py), real sample images decoded by
//! libjpeg-turbo and libpng (tests/reference/sample_stats.py), hand-computed colour pixels,
//! and hostile inputs (truncations, size bombs, non-images).

use std::path::{Path, PathBuf};

use cxr_msn::decode::{
    DecodeLimits, Decoded, ImageFormat, decode, decode_downscaled, decode_downscaled16,
};
use cxr_msn::ehr::{Sex, ViewPosition};
use cxr_msn::error::DecodeError;
use cxr_msn::views::{LOAD_SHORTER_SIDE, eval_view, into_loaded, resize_shorter_side};
use serde_json::Value;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn manifest() -> Vec<Value> {
    let text = read(&data_dir().join("dicom/manifest.json"));
    let value: Value = serde_json::from_slice(&text).expect("manifest.json is JSON");
    value.as_array().expect("manifest is a list").clone()
}

/// A raw little-endian f32 reference image.
fn reference(name: &str) -> Vec<f32> {
    read(&data_dir().join("dicom").join(name))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Decodes with the default limits, except that the tiny hand-made images of these tests
/// are accepted (the smallest side is tested in `images_smaller_than_a_patch_are_refused`).
fn decode_default(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    decode(
        bytes,
        &DecodeLimits {
            min_side: 1,
            ..DecodeLimits::default()
        },
    )
}

fn sex_name(sex: Option<Sex>) -> Option<&'static str> {
    sex.map(|s| match s {
        Sex::Male => "M",
        Sex::Female => "F",
    })
}

fn view_name(view: Option<ViewPosition>) -> Option<&'static str> {
    view.map(|v| match v {
        ViewPosition::Pa => "PA",
        ViewPosition::Ap => "AP",
        ViewPosition::Lateral => "LATERAL",
        ViewPosition::Ll => "LL",
    })
}

#[test]
fn dicom_fixtures_match_the_numpy_reference() {
    let entries = manifest();
    assert!(
        entries.len() >= 15,
        "manifest lists {} fixtures",
        entries.len()
    );
    for entry in entries {
        let file = entry["file"].as_str().unwrap();
        let decoded = decode_default(&read(&data_dir().join("dicom").join(file)))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let (width, height) = (
            entry["width"].as_u64().unwrap() as usize,
            entry["height"].as_u64().unwrap() as usize,
        );
        assert_eq!(decoded.format, ImageFormat::Dicom, "{file}");
        assert_eq!(
            (decoded.image.width, decoded.image.height),
            (width, height),
            "{file}"
        );
        let bits = entry["bits_stored"].as_u64().unwrap();
        assert_eq!(u64::from(decoded.bit_depth), bits, "{file}");

        let tags = decoded.dicom.as_ref().expect("DICOM tags");
        assert_eq!(tags.transfer_syntax, entry["transfer_syntax"], "{file}");
        assert_eq!(tags.photometric, entry["photometric"], "{file}");
        assert_eq!(u64::from(tags.bits_stored), bits, "{file}");
        assert_eq!(sex_name(tags.sex), entry["sex"].as_str(), "{file}");
        assert_eq!(view_name(tags.view), entry["view"].as_str(), "{file}");
        assert_eq!(
            tags.modality.as_deref(),
            entry["modality"].as_str(),
            "{file}"
        );
        match entry["age_years"].as_f64() {
            Some(age) => {
                let got = tags.age_years.unwrap_or_else(|| panic!("{file}: no age"));
                assert!((f64::from(got) - age).abs() < 1e-4, "{file}: age {got}");
            }
            None => assert_eq!(tags.age_years, None, "{file}"),
        }

        let expected = reference(entry["reference"].as_str().unwrap());
        assert_eq!(expected.len(), width * height, "{file}");
        let tolerance = entry["tolerance"].as_f64().unwrap();
        let (mut max_diff, mut sum_diff) = (0f64, 0f64);
        for (got, want) in decoded.image.pixels.iter().zip(&expected) {
            assert!(
                (0.0..=1.0).contains(got),
                "{file}: intensity {got} outside [0, 1]"
            );
            let diff = f64::from((got - want).abs());
            max_diff = max_diff.max(diff);
            sum_diff += diff;
        }
        let mean_diff = sum_diff / expected.len() as f64;
        assert!(
            max_diff <= tolerance,
            "{file}: max |decoded - reference| = {max_diff:.3e} > {tolerance:.1e} \
             (mean {mean_diff:.3e})"
        );
        // Lossy fixtures: on average much closer than the worst pixel.
        assert!(
            mean_diff <= tolerance / 2.0,
            "{file}: mean diff {mean_diff:.3e}"
        );
    }
}

#[test]
fn dicom_pipeline_steps_are_visible_in_the_fixtures() {
    let decoded = |name: &str| decode_default(&read(&data_dir().join("dicom").join(name)));
    // MONOCHROME1 is inverted: the min-max mapped lowest stored value is white.
    let a = decoded("a_explicit.dcm").unwrap();
    // Downscaled, a DICOM frame keeps its stored size on record.
    let (w, h) = (a.image.width, a.image.height);
    let side = w.min(h) / 2;
    let bytes = read(&data_dir().join("dicom").join("a_explicit.dcm"));
    let small = decode_downscaled(&bytes, &DecodeLimits::default(), side).unwrap();
    assert_eq!(small.image.width.min(small.image.height), side);
    assert_eq!((small.original_size, a.original_size), ((w, h), (w, h)));
    assert_eq!(small.dicom, a.dicom);
    let max = a.image.pixels.iter().cloned().fold(f32::MIN, f32::max);
    let min = a.image.pixels.iter().cloned().fold(f32::MAX, f32::min);
    assert_eq!((min, max), (0.0, 1.0));
    // The junk above BitsStored does not leak: without masking the values would be far
    // outside the window and saturate.
    let b = decoded("b_mono2_12bit_window.dcm").unwrap();
    let saturated = b.image.pixels.iter().filter(|&&p| p == 1.0).count();
    assert!(
        saturated < b.image.pixels.len() / 2,
        "{saturated} saturated pixels"
    );
    // Lossless codecs give exactly the same image as the native encoding.
    for other in [
        "a_implicit.dcm",
        "a_deflated.dcm",
        "a_rle.dcm",
        "a_jpeg_lossless_sv1.dcm",
        "a_jpeg_lossless_p14.dcm",
        "a_j2k_lossless.dcm",
        "a_encapsulated_uncompressed.dcm",
    ] {
        assert_eq!(decoded(other).unwrap().image, a.image, "{other}");
    }
}

/// Cut points: every byte through the headers, then a spread over the rest.
fn cut_points(len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..len.min(700)).collect();
    cuts.extend((0..64).map(|k| 700 + k * len.saturating_sub(701) / 64));
    cuts.extend(len.saturating_sub(16)..len);
    cuts.retain(|&c| c < len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[test]
fn every_truncated_dicom_fixture_is_an_error() {
    for entry in manifest() {
        let file = entry["file"].as_str().unwrap();
        let bytes = read(&data_dir().join("dicom").join(file));
        let deflated = entry["transfer_syntax"] == "1.2.840.10008.1.2.1.99";
        for cut in cut_points(bytes.len()) {
            let result = decode_default(&bytes[..cut]);
            if deflated && cut == bytes.len() - 1 && bytes[cut] == 0 {
                // The pad byte that makes a deflated data set even-length: without it the
                // DEFLATE stream is still complete, so this must decode to the same image.
                let full = decode_default(&bytes).unwrap();
                assert_eq!(result.map(|d| d.image), Ok(full.image), "{file}");
                continue;
            }
            assert!(
                result.is_err(),
                "{file} cut at {cut} of {} bytes decoded",
                bytes.len()
            );
        }
    }
}

#[test]
fn every_truncated_sample_image_is_an_error() {
    for name in [
        "person1951_bacteria_4882.jpeg",
        "RG1_chest_PA_display_8bit_1024.png",
    ] {
        let bytes = read(&data_dir().join("samples").join(name));
        let len = bytes.len();
        let mut cuts: Vec<usize> = (0..40).map(|k| k * len / 40).collect();
        cuts.extend((1..=12).map(|k| len - k));
        for cut in cuts {
            assert!(
                decode_default(&bytes[..cut]).is_err(),
                "{name} cut at {cut} of {len} bytes decoded"
            );
        }
    }
}

#[test]
fn real_sample_images_match_independent_decoders() {
    let text = read(&data_dir().join("samples/reference.json"));
    let stats: Value = serde_json::from_slice(&text).unwrap();
    let stats = stats.as_object().unwrap();
    assert_eq!(stats.len(), 4);
    for (name, s) in stats {
        let decoded = decode_default(&read(&data_dir().join("samples").join(name)))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let image = &decoded.image;
        assert_eq!(image.width as u64, s["width"].as_u64().unwrap(), "{name}");
        assert_eq!(image.height as u64, s["height"].as_u64().unwrap(), "{name}");
        assert_eq!(
            u64::from(decoded.bit_depth),
            s["bit_depth"].as_u64().unwrap(),
            "{name}"
        );
        assert!(decoded.dicom.is_none());
        let png = name.ends_with(".png");
        assert_eq!(
            decoded.format,
            if png {
                ImageFormat::Png
            } else {
                ImageFormat::Jpeg
            }
        );
        assert!(
            image.pixels.iter().all(|p| (0.0..=1.0).contains(p)),
            "{name}"
        );
        // PNG is lossless, so exact; JPEG decoders may round the IDCT differently.
        let (pixel_tol, mean_tol) = if png {
            (1e-6, 1e-6)
        } else {
            (3.0 / 255.0, 2e-3)
        };
        let mean =
            image.pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / image.pixels.len() as f64;
        let want_mean = s["mean"].as_f64().unwrap();
        assert!(
            (mean - want_mean).abs() < mean_tol,
            "{name}: mean {mean} vs {want_mean}"
        );
        for point in s["pixels"].as_array().unwrap() {
            let (x, y) = (
                point[0].as_u64().unwrap() as usize,
                point[1].as_u64().unwrap() as usize,
            );
            let want = point[2].as_f64().unwrap();
            let got = f64::from(image.get(x, y));
            assert!(
                (got - want).abs() <= pixel_tol,
                "{name} ({x}, {y}): {got} vs {want}"
            );
        }
        let mut levels: Vec<u32> = image.pixels.iter().map(|p| p.to_bits()).collect();
        levels.sort_unstable();
        levels.dedup();
        let want_levels = s["distinct_levels"].as_u64().unwrap() as usize;
        if png {
            assert_eq!(levels.len(), want_levels, "{name}");
        }
        if name.contains("16bit") {
            assert!(levels.len() > 256, "16-bit PNG has {} levels", levels.len());
        }
    }
}

/// A PNG from raw samples, written by the png crate's encoder.
fn png_bytes(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<Vec<u8>>,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some(p) = palette {
            encoder.set_palette(p);
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }
    out
}

/// BT.601 luma in [0, 1] of an 8-bit triple, computed by hand.
fn luma8(r: f64, g: f64, b: f64) -> f64 {
    (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
}

#[test]
fn colour_becomes_bt601_grey() {
    // 2x2 RGB, 8 bits: red, green, blue, and a mixed colour.
    let rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30];
    let bytes = png_bytes(2, 2, png::ColorType::Rgb, png::BitDepth::Eight, &rgb, None);
    let decoded = decode_default(&bytes).unwrap();
    let want = [
        0.299,
        0.587,
        0.114,
        (0.299 * 10.0 + 0.587 * 20.0 + 0.114 * 30.0) / 255.0,
    ];
    for (got, want) in decoded.image.pixels.iter().zip(want) {
        assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert_eq!(decoded.bit_depth, 8);

    // 1x3 RGBA, 16 bits (big-endian samples); alpha is dropped, and the luma is stretched
    // from the darkest pixel's to the brightest's (a 16-bit file is not a display image).
    let rgba16: Vec<u8> = [
        1000u16, 2000, 3000, 7, 30000, 30000, 30000, 0, 1000, 2000, 9000, 65535,
    ]
    .iter()
    .flat_map(|v| v.to_be_bytes())
    .collect();
    let bytes = png_bytes(
        1,
        3,
        png::ColorType::Rgba,
        png::BitDepth::Sixteen,
        &rgba16,
        None,
    );
    let decoded = decode_default(&bytes).unwrap();
    let luma = |r: f64, g: f64, b: f64| 0.299 * r + 0.587 * g + 0.114 * b;
    let (dark, bright) = (luma(1000.0, 2000.0, 3000.0), 30000.0);
    let want = [
        0.0,
        1.0,
        (luma(1000.0, 2000.0, 9000.0) - dark) / (bright - dark),
    ];
    for (got, want) in decoded.image.pixels.iter().zip(want) {
        assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert_eq!(decoded.bit_depth, 16);

    // A palette image: indices into (12, 200, 99) and (0, 0, 0).
    let palette = vec![12, 200, 99, 0, 0, 0];
    let bytes = png_bytes(
        2,
        1,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        &[0, 1],
        Some(palette),
    );
    let decoded = decode_default(&bytes).unwrap();
    assert!((f64::from(decoded.image.pixels[0]) - luma8(12.0, 200.0, 99.0)).abs() < 1e-6);
    assert_eq!(decoded.image.pixels[1], 0.0);
}

#[test]
fn grey_png_depths_scale_to_full_range() {
    // 4-bit grey: 15 is white, 5 is a third.
    let bytes = png_bytes(
        2,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Four,
        &[0xF5],
        None,
    );
    let decoded = decode_default(&bytes).unwrap();
    assert_eq!(decoded.bit_depth, 4);
    assert!((decoded.image.pixels[0] - 1.0).abs() < 1e-6);
    assert!((decoded.image.pixels[1] - 5.0 / 15.0).abs() < 1e-6);
    // 16-bit grey keeps all levels, stretched from the image's darkest to its brightest:
    // 256, 257 and 260 become 0, 1/4 and 1.
    let bytes = png_bytes(
        3,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &[0x01, 0x00, 0x01, 0x01, 0x01, 0x04],
        None,
    );
    let decoded = decode_default(&bytes).unwrap();
    assert_eq!(decoded.image.pixels, [0.0, 0.25, 1.0]);
    // A flat 16-bit image is black, as a DICOM frame without a window and without contrast.
    let bytes = png_bytes(
        2,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &[0x80, 0x00, 0x80, 0x00],
        None,
    );
    assert_eq!(decode_default(&bytes).unwrap().image.pixels, [0.0, 0.0]);
}

#[test]
fn one_pixel_images_decode() {
    let bytes = png_bytes(
        1,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[51],
        None,
    );
    let decoded = decode_default(&bytes).unwrap();
    assert_eq!((decoded.image.width, decoded.image.height), (1, 1));
    assert!((decoded.image.pixels[0] - 0.2).abs() < 1e-6);
    let dicom = decode_default(&read(&data_dir().join("dicom/g_1x1.dcm"))).unwrap();
    assert_eq!(dicom.image.pixels, vec![0.0]);
}

#[test]
fn images_smaller_than_a_patch_are_refused() {
    let limits = DecodeLimits::default();
    let dicom = decode(&read(&data_dir().join("dicom/g_1x1.dcm")), &limits).unwrap_err();
    assert!(
        dicom
            .to_string()
            .starts_with("DICOM image is 1x1 pixels, too small to be a radiograph"),
        "{dicom}"
    );
    let grey = vec![7u8; 16 * 15];
    let png = png_bytes(
        16,
        15,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &grey,
        None,
    );
    assert!(matches!(
        decode(&png, &limits),
        Err(DecodeError::TooSmall {
            width: 16,
            height: 15,
            min_side: 16,
            ..
        })
    ));
    let grey = vec![7u8; 16 * 16];
    let png = png_bytes(
        16,
        16,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &grey,
        None,
    );
    assert!(decode(&png, &limits).is_ok());
}

#[test]
fn empty_and_text_inputs_are_refused_with_a_description() {
    assert_eq!(decode_default(&[]), Err(DecodeError::Empty));
    let err = decode_default(b"patient_id,age,sex\n1,64,F\n").unwrap_err();
    assert!(matches!(err, DecodeError::UnknownFormat(_)));
    let text = err.to_string();
    assert!(text.contains("70 61 74 69 65 6E 74"), "{text}");
    assert!(text.contains("patient_id,age,"), "{text}");
    assert!(text.contains("DICM"), "{text}");
}

/// CRC-32 (ISO-HDLC, as PNG uses), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

#[test]
fn png_declaring_100000_squared_is_refused_before_allocation() {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, deflate, no filter, no interlace
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(png_chunk(b"IHDR", &ihdr));
    // A valid zlib stream of a few bytes: far too little data for the declared size.
    bytes.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    ));
    bytes.extend(png_chunk(b"IEND", &[]));
    let err = decode_default(&bytes).unwrap_err();
    match &err {
        DecodeError::TooLarge {
            format,
            width,
            height,
            max_side,
            ..
        } => {
            assert_eq!(*format, ImageFormat::Png);
            assert_eq!((*width, *height), (100_000, 100_000));
            assert_eq!(*max_side, 16384);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("100000x100000") && text.contains("16384"),
        "{text}"
    );

    // A zero-sized header is refused as such (the png crate itself rejects 0 in IHDR, so
    // either error is fine, but never a panic or an image).
    let mut zero = ihdr.clone();
    zero[..4].copy_from_slice(&0u32.to_be_bytes());
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(png_chunk(b"IHDR", &zero));
    bytes.extend(png_chunk(b"IEND", &[]));
    assert!(decode_default(&bytes).is_err());
}

#[test]
fn jpeg_declaring_a_huge_frame_is_refused() {
    // SOI, SOF0 of 60000 x 60000, 1 component, EOI.
    let bytes = [
        0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, 0xEA, 0x60, 0xEA, 0x60, 1, 1, 0x11, 0, 0xFF, 0xD9,
    ];
    let err = decode_default(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooLarge {
                width: 60000,
                height: 60000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn smaller_limits_apply() {
    let bytes = read(&data_dir().join("samples/person1951_bacteria_4882.jpeg"));
    let limits = DecodeLimits {
        min_side: 1,
        max_side: 1000,
        max_pixels: 1 << 30,
    };
    assert!(matches!(
        decode(&bytes, &limits),
        Err(DecodeError::TooLarge { width: 1016, .. })
    ));
    let limits = DecodeLimits {
        min_side: 1,
        max_side: 4096,
        max_pixels: 100_000,
    };
    assert!(matches!(
        decode(&bytes, &limits),
        Err(DecodeError::TooLarge { .. })
    ));
}

// ---- DICOM files built here, for the cases the fixtures do not cover ----------------------

/// An explicit VR little endian element.
fn element(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == b"UI" || vr == b"OB" { 0 } else { b' ' });
    }
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&value);
    out
}

/// A Part 10 file: preamble, DICM, file meta with the transfer syntax, then `dataset`.
fn part10(transfer_syntax: &str, dataset: &[u8]) -> Vec<u8> {
    let mut meta = element(0x0002, 0x0001, b"OB", &[0, 1]);
    meta.extend(element(0x0002, 0x0010, b"UI", transfer_syntax.as_bytes()));
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend(element(
        0x0002,
        0x0000,
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    ));
    out.extend(meta);
    out.extend_from_slice(dataset);
    out
}

/// A MONOCHROME2 image module of `rows` x `cols`, `bits` allocated and stored.
fn image_module(rows: u16, cols: u16, bits: u16) -> Vec<u8> {
    let mut ds = element(0x0028, 0x0002, b"US", &1u16.to_le_bytes());
    ds.extend(element(0x0028, 0x0004, b"CS", b"MONOCHROME2"));
    ds.extend(element(0x0028, 0x0010, b"US", &rows.to_le_bytes()));
    ds.extend(element(0x0028, 0x0011, b"US", &cols.to_le_bytes()));
    ds.extend(element(0x0028, 0x0100, b"US", &bits.to_le_bytes()));
    ds.extend(element(0x0028, 0x0101, b"US", &bits.to_le_bytes()));
    ds.extend(element(0x0028, 0x0102, b"US", &(bits - 1).to_le_bytes()));
    ds.extend(element(0x0028, 0x0103, b"US", &0u16.to_le_bytes()));
    ds
}

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

#[test]
fn dicom_built_here_decodes() {
    let mut ds = image_module(2, 2, 8);
    ds.extend(element(0x7FE0, 0x0010, b"OB", &[0, 50, 100, 200]));
    let decoded = decode_default(&part10(EXPLICIT_LE, &ds)).unwrap();
    let want = [0.0, 0.25, 0.5, 1.0];
    assert_eq!(decoded.image.pixels, want);
    let tags = decoded.dicom.unwrap();
    assert_eq!((tags.sex, tags.age_years, tags.view), (None, None, None));
}

#[test]
fn unsupported_transfer_syntaxes_are_named() {
    let mut ds = image_module(2, 2, 8);
    ds.extend(element(0x7FE0, 0x0010, b"OB", &[0, 50, 100, 200]));
    for (uid, name) in [
        ("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless"),
        ("1.2.840.10008.1.2.2", "Big Endian"),
        ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000"),
        ("1.2.3.4", "unknown transfer syntax"),
    ] {
        let err = decode_default(&part10(uid, &ds)).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnsupportedTransferSyntax { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(uid) && text.contains(name), "{text}");
    }
}

#[test]
fn dicom_size_bomb_and_missing_pixels_are_refused() {
    let mut ds = image_module(65535, 65535, 16);
    ds.extend(element(0x7FE0, 0x0010, b"OW", &[0, 0, 0, 0]));
    let err = decode_default(&part10(EXPLICIT_LE, &ds)).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooLarge {
                width: 65535,
                height: 65535,
                ..
            }
        ),
        "{err:?}"
    );

    let mut ds = image_module(0, 16, 16);
    ds.extend(element(0x7FE0, 0x0010, b"OW", &[]));
    let err = decode_default(&part10(EXPLICIT_LE, &ds)).unwrap_err();
    assert!(matches!(err, DecodeError::ZeroSize { .. }), "{err:?}");

    let ds = image_module(2, 2, 8);
    let err = decode_default(&part10(EXPLICIT_LE, &ds)).unwrap_err();
    assert_eq!(err, DecodeError::MissingPixelData);
    assert!(err.to_string().contains("(7FE0,0010)"));

    // Pixel data shorter than Rows x Columns needs.
    let mut ds = image_module(4, 4, 16);
    ds.extend(element(0x7FE0, 0x0010, b"OW", &[0; 30]));
    let err = decode_default(&part10(EXPLICIT_LE, &ds)).unwrap_err();
    assert!(err.to_string().contains("needs 32"), "{err}");

    // 32-bit samples are refused, by name.
    let mut ds = image_module(1, 1, 32);
    ds.extend(element(0x7FE0, 0x0010, b"OW", &[0; 4]));
    let err = decode_default(&part10(EXPLICIT_LE, &ds)).unwrap_err();
    assert!(err.to_string().contains("BitsAllocated 32"), "{err}");
}

/// The full-size radiograph, when the shared data is present (it is not in CI).
#[test]
fn full_rg1_radiograph_when_available() {
    let path = Path::new("/work/shared/data/cxr-samples/rg1-adult-pa/RG1_UNCR.dcm");
    if !path.exists() {
        println!(
            "note: {} is absent; skipping the full-size DICOM check",
            path.display()
        );
        return;
    }
    let decoded = decode_default(&read(path)).unwrap();
    assert_eq!((decoded.image.width, decoded.image.height), (1841, 1955));
    assert_eq!(decoded.bit_depth, 15);
    let tags = decoded.dicom.unwrap();
    assert_eq!(tags.sex, Some(Sex::Female));
    assert_eq!(tags.age_years, Some(64.0));
    assert_eq!(tags.view, Some(ViewPosition::Pa));
    assert_eq!(tags.modality.as_deref(), Some("CR"));
    assert_eq!(tags.photometric, "MONOCHROME1");
    assert_eq!(tags.bits_stored, 15);
    assert_eq!(tags.transfer_syntax, EXPLICIT_LE);
    assert!(decoded.image.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
}

/// Splits an encapsulated single-fragment fixture into (bytes before the fragment item,
/// fragment, bytes after it).
fn split_fragment(bytes: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let marker = [
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    let start = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("encapsulated Pixel Data")
        + marker.len();
    let bot_len = u32::from_le_bytes(bytes[start + 4..start + 8].try_into().unwrap()) as usize;
    let item = start + 8 + bot_len;
    assert_eq!(bytes[item..item + 4], [0xFE, 0xFF, 0x00, 0xE0]);
    let len = u32::from_le_bytes(bytes[item + 4..item + 8].try_into().unwrap()) as usize;
    let fragment = bytes[item + 8..item + 8 + len].to_vec();
    (
        bytes[..item].to_vec(),
        fragment,
        bytes[item + 8 + len..].to_vec(),
    )
}

/// The fixture with its fragment replaced (item length fixed, padded to even length).
fn with_fragment(head: &[u8], fragment: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut fragment = fragment.to_vec();
    if fragment.len() % 2 == 1 {
        fragment.push(0);
    }
    let mut out = head.to_vec();
    out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    out.extend_from_slice(&(fragment.len() as u32).to_le_bytes());
    out.extend_from_slice(&fragment);
    out.extend_from_slice(tail);
    out
}

#[test]
fn damaged_codestreams_in_valid_containers_never_panic() {
    let fixtures = [
        ("a_rle.dcm", true),
        ("a_jpeg_lossless_sv1.dcm", true),
        ("c_signed_jpeg_lossless.dcm", true),
        ("e_jpeg_baseline.dcm", true),
        // JPEG 2000 decoders may legitimately return what the data they got describes.
        ("a_j2k_lossless.dcm", false),
        ("a_j2k_lossy.dcm", false),
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (name, truncation_is_error) in fixtures {
        let bytes = read(&data_dir().join("dicom").join(name));
        let (head, fragment, tail) = split_fragment(&bytes);
        assert!(decode_default(&with_fragment(&head, &fragment, &tail)).is_ok());
        let len = fragment.len();
        // Truncated codestreams: the container is valid, the codec data ends early.
        for k in 0..48 {
            let cut = k * len / 48;
            let result = decode_default(&with_fragment(&head, &fragment[..cut], &tail));
            if truncation_is_error {
                assert!(
                    result.is_err(),
                    "{name}: fragment cut at {cut} of {len} decoded"
                );
            }
        }
        // Random byte corruption: any result but a panic.
        for _ in 0..64 {
            let mut damaged = fragment.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % len;
                damaged[at] = next() as u8;
            }
            let _ = decode_default(&with_fragment(&head, &damaged, &tail));
        }
    }
}

#[test]
fn random_byte_corruption_never_panics() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut files: Vec<(PathBuf, usize)> = manifest()
        .iter()
        .map(|e| {
            (
                data_dir().join("dicom").join(e["file"].as_str().unwrap()),
                150,
            )
        })
        .collect();
    for name in [
        "person1951_bacteria_4882.jpeg",
        "RG1_chest_PA_display_8bit_1024.png",
    ] {
        files.push((data_dir().join("samples").join(name), 30));
    }
    for (path, rounds) in files {
        let bytes = read(&path);
        for round in 0..rounds {
            let mut damaged = bytes.clone();
            // Mostly in the headers, where lengths and sizes live; sometimes anywhere.
            let span = if round % 3 == 0 {
                bytes.len()
            } else {
                bytes.len().min(1024)
            };
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % span;
                damaged[at] = next() as u8;
            }
            // Any result but a panic; an image must still be well-formed.
            if let Ok(decoded) = decode_default(&damaged) {
                let image = decoded.image;
                assert_eq!(image.pixels.len(), image.width * image.height);
                assert!(image.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
            }
        }
    }
}

/// `decode_downscaled` resamples 8-bit grey JPEGs straight from the decoder's bytes and
/// resizes the decoded image otherwise (colour, progressive, PNG): either way it must be the
/// full decode resized, up to float rounding.
#[test]
fn downscaled_decoding_matches_the_full_decode_resized() {
    let limits = DecodeLimits::default();
    for path in [
        data_dir().join("samples/person1946_bacteria_4875.jpeg"),
        data_dir().join("samples/person1951_bacteria_4882.jpeg"),
        data_dir().join("derived/RG1_chest_PA_colour_progressive.jpeg"),
        data_dir().join("samples/RG1_chest_PA_display_8bit_1024.png"),
    ] {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = read(&path);
        let full = decode(&bytes, &limits).unwrap();
        let shorter = full.image.width.min(full.image.height);
        for side in [2000, shorter, 512, 300, 150, 64] {
            let got = decode_downscaled(&bytes, &limits, side)
                .unwrap_or_else(|e| panic!("{name} at {side}: {e}"));
            assert_eq!((got.format, got.bit_depth), (full.format, full.bit_depth));
            // The file's size, whatever the size decoded to.
            assert_eq!(full.original_size, (full.image.width, full.image.height));
            assert_eq!(got.original_size, full.original_size, "{name} at {side}");
            let want = if shorter > side {
                resize_shorter_side(&full.image, side)
            } else {
                full.image.clone()
            };
            let (got, want) = (&got.image, &want);
            assert_eq!(
                (got.width, got.height),
                (want.width, want.height),
                "{name} at {side}"
            );
            let n = got.pixels.len() as f64;
            let diffs = got
                .pixels
                .iter()
                .zip(&want.pixels)
                .map(|(a, b)| (a - b).abs());
            let mean = diffs.clone().map(f64::from).sum::<f64>() / n;
            let worst = diffs.fold(0.0f32, f32::max);
            assert!(
                mean < 1e-7 && worst < 1e-6,
                "{name} at {side}: mean {mean:.2e}, worst {worst:.2e}"
            );
            // The loader's 16-bit levels: the nearest level to each float, but where the
            // floats' rounding (mean 1e-7, worst 1e-6) straddles a half level.
            let levels = decode_downscaled16(&bytes, &limits, side)
                .unwrap_or_else(|e| panic!("{name} at {side}, 16-bit: {e}"));
            assert_eq!(
                (levels.format, levels.bit_depth, levels.original_size),
                (full.format, full.bit_depth, full.original_size)
            );
            let levels = &levels.image;
            assert_eq!((levels.width, levels.height), (want.width, want.height));
            let mut off = 0usize;
            for (l, v) in levels.pixels.iter().zip(&want.pixels) {
                let exact = f64::from(*v) * 65535.0;
                let distance = (f64::from(*l) - exact).abs();
                // The floats' own worst error above, in levels.
                let slack = 65535.0 * 1e-6;
                assert!(
                    distance <= 0.5 + slack,
                    "{name} at {side}: level {l} for {exact}"
                );
                off += usize::from(distance > 0.5);
            }
            assert!(
                (off as f64) < 0.02 * n,
                "{name} at {side}: {off} of {n} levels not the nearest"
            );
        }
    }
}

/// Three ways to the loaded size: the whole file decoded and brought down (`into_loaded`,
/// as the contact sheet does), decoded straight to it (`decode_downscaled`, which resamples
/// 8-bit grey JPEGs and PNGs from the decoder's bytes: `predict`, `eval` and the page) and
/// straight to 16-bit levels (`decode_downscaled16`: the trainer's loader). The evaluation
/// view must be the same, or a file would score differently in training, in `predict` and
/// in the browser.
#[test]
fn the_evaluation_view_is_the_same_by_every_loading_path() {
    let limits = DecodeLimits::default();
    for name in [
        "person1946_bacteria_4875.jpeg",
        "RG1_chest_PA_monochrome2_16bit_1024.png",
    ] {
        let bytes = read(&data_dir().join("samples").join(name));
        let whole = decode(&bytes, &limits).unwrap().image;
        assert!(
            whole.width.min(whole.height) > LOAD_SHORTER_SIDE,
            "{name} must be large"
        );
        let page = eval_view(&into_loaded(whole.clone()));
        let direct = eval_view(
            &decode_downscaled(&bytes, &limits, LOAD_SHORTER_SIDE)
                .unwrap()
                .image,
        );
        let worst = page
            .pixels
            .iter()
            .zip(&direct.pixels)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 1e-5, "{name}: {worst}");
        // The loader keeps 16-bit levels: at most half a level (7.6e-6) more.
        let loader = eval_view(
            &decode_downscaled16(&bytes, &limits, LOAD_SHORTER_SIDE)
                .unwrap()
                .image,
        );
        let worst = page
            .pixels
            .iter()
            .zip(&loader.pixels)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 1e-5, "{name}, the loader's levels: {worst}");
        // Loading first is not a no-op: the view of the whole image differs.
        let unloaded = eval_view(&whole);
        assert!(
            unloaded
                .pixels
                .iter()
                .zip(&page.pixels)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "{name}"
        );
    }
}
