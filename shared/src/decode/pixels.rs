//! DICOM images: the Image Pixel module, the first frame's samples (native, RLE, JPEG,
//! JPEG 2000), the grey pipeline of the [module docs](super#dicom), and the header fields of
//! [`DicomTags`].

use jpeg_decoder::ColorTransform;

use super::codecs;
use super::dicom::{self, DataSet, PixelData, Tag, TransferSyntax, corrupt, tag_str};
use super::{DecodeLimits, Decoded, DicomTags, ImageFormat, luma_bt601};
use crate::ehr::{Sex, ViewPosition};
use crate::error::DecodeError;
use crate::image::GreyImage;

const F: ImageFormat = ImageFormat::Dicom;

const MODALITY: Tag = (0x0008, 0x0060);
const STUDY_DATE: Tag = (0x0008, 0x0020);
const SERIES_DATE: Tag = (0x0008, 0x0021);
const ACQUISITION_DATE: Tag = (0x0008, 0x0022);
const CONTENT_DATE: Tag = (0x0008, 0x0023);
const PATIENT_BIRTH_DATE: Tag = (0x0010, 0x0030);
const PATIENT_SEX: Tag = (0x0010, 0x0040);
const PATIENT_AGE: Tag = (0x0010, 0x1010);
const VIEW_POSITION: Tag = (0x0018, 0x5101);
const SAMPLES_PER_PIXEL: Tag = (0x0028, 0x0002);
const PHOTOMETRIC: Tag = (0x0028, 0x0004);
const PLANAR_CONFIGURATION: Tag = (0x0028, 0x0006);
const NUMBER_OF_FRAMES: Tag = (0x0028, 0x0008);
const ROWS: Tag = (0x0028, 0x0010);
const COLUMNS: Tag = (0x0028, 0x0011);
const BITS_ALLOCATED: Tag = (0x0028, 0x0100);
const BITS_STORED: Tag = (0x0028, 0x0101);
const HIGH_BIT: Tag = (0x0028, 0x0102);
const PIXEL_REPRESENTATION: Tag = (0x0028, 0x0103);
const WINDOW_CENTER: Tag = (0x0028, 0x1050);
const WINDOW_WIDTH: Tag = (0x0028, 0x1051);
const RESCALE_INTERCEPT: Tag = (0x0028, 0x1052);
const RESCALE_SLOPE: Tag = (0x0028, 0x1053);
const VOI_LUT_FUNCTION: Tag = (0x0028, 0x1056);

/// Decodes a DICOM Part 10 file: first frame, grey pipeline, header tags.
pub(super) fn decode_dicom(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    let (uid, start) = dicom::read_file_meta(bytes)?;
    let syntax = TransferSyntax::from_uid(&uid)?;
    let inflated;
    let (data, start) = if syntax == TransferSyntax::DeflatedLe {
        let rest = bytes.get(start..).unwrap_or_default();
        // One frame at the limit (RGB, 16 bits) plus 1 MiB of header.
        let max_len = limits.max_pixels.saturating_mul(6).saturating_add(1 << 20);
        inflated = codecs::inflate(rest, max_len)?;
        (inflated.as_slice(), 0)
    } else {
        (bytes, start)
    };
    let ds = dicom::parse_dataset(data, start, syntax.explicit_vr())?;
    let module = PixelModule::read(&ds)?;
    limits.check(F, module.columns as u64, module.rows as u64)?;
    let frame = first_frame(&ds, syntax, &module, limits)?;
    let pixels = to_grey(&frame, &module, &ds)?;
    let image = GreyImage::new(module.columns, module.rows, pixels)
        .ok_or_else(|| corrupt("pixel count does not match Rows x Columns"))?;
    Ok(Decoded {
        original_size: (image.width, image.height),
        image,
        format: F,
        bit_depth: module.bits_stored as u8,
        dicom: Some(read_tags(&ds, &module, uid)),
    })
}

/// How the samples of a pixel relate to colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Photometric {
    /// Grey, low values dark.
    Monochrome2,
    /// Grey, low values bright.
    Monochrome1,
    /// RGB samples (also what the JPEG and JPEG 2000 decoders give for YBR data).
    Rgb,
    /// Native YBR_FULL: Y, Cb, Cr per pixel.
    YbrFull,
    /// Native YBR_FULL_422: Y, Y, Cb, Cr per two pixels.
    YbrFull422,
}

/// The Image Pixel module attributes, validated.
#[derive(Debug, Clone)]
struct PixelModule {
    rows: usize,
    columns: usize,
    samples_per_pixel: usize,
    photometric_name: String,
    photometric: Photometric,
    planar: bool,
    frames: usize,
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
}

fn bad(tag: Tag, name: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError::BadAttribute {
        tag: tag_str(tag),
        name,
        detail: detail.into(),
    }
}

/// A required US attribute.
fn required_us(ds: &DataSet<'_>, tag: Tag, name: &'static str) -> Result<u16, DecodeError> {
    ds.us(tag, name)?
        .ok_or_else(|| bad(tag, name, "missing; it is required for an image"))
}

impl PixelModule {
    /// Reads and checks the pixel attributes. Defaults: SamplesPerPixel 1, BitsStored =
    /// BitsAllocated, HighBit = BitsStored - 1, PixelRepresentation 0, PlanarConfiguration 0,
    /// NumberOfFrames 1, PhotometricInterpretation MONOCHROME2 for one sample per pixel.
    fn read(ds: &DataSet<'_>) -> Result<Self, DecodeError> {
        let rows = required_us(ds, ROWS, "Rows")?;
        let columns = required_us(ds, COLUMNS, "Columns")?;
        let bits_allocated = required_us(ds, BITS_ALLOCATED, "BitsAllocated")?;
        if bits_allocated != 8 && bits_allocated != 16 {
            return Err(DecodeError::Unsupported {
                format: F,
                detail: format!(
                    "BitsAllocated {bits_allocated}: only 8- and 16-bit samples are read"
                ),
            });
        }
        let bits_stored = ds.us(BITS_STORED, "BitsStored")?.unwrap_or(bits_allocated);
        if bits_stored == 0 || bits_stored > bits_allocated {
            return Err(bad(
                BITS_STORED,
                "BitsStored",
                format!("{bits_stored}; expected 1 to BitsAllocated ({bits_allocated})"),
            ));
        }
        let high_bit = ds.us(HIGH_BIT, "HighBit")?.unwrap_or(bits_stored - 1);
        if high_bit >= bits_allocated || high_bit + 1 < bits_stored {
            return Err(bad(
                HIGH_BIT,
                "HighBit",
                format!(
                    "{high_bit}; expected BitsStored - 1 ({}) to BitsAllocated - 1 ({})",
                    bits_stored - 1,
                    bits_allocated - 1
                ),
            ));
        }
        let signed = match ds.us(PIXEL_REPRESENTATION, "PixelRepresentation")? {
            None | Some(0) => false,
            Some(1) => true,
            Some(other) => {
                return Err(bad(
                    PIXEL_REPRESENTATION,
                    "PixelRepresentation",
                    format!("{other}; expected 0 (unsigned) or 1 (two's complement)"),
                ));
            }
        };
        let samples_per_pixel =
            usize::from(ds.us(SAMPLES_PER_PIXEL, "SamplesPerPixel")?.unwrap_or(1));
        let photometric_name = ds.text(PHOTOMETRIC).unwrap_or_else(|| {
            if samples_per_pixel == 1 {
                "MONOCHROME2".to_string()
            } else {
                String::new()
            }
        });
        let photometric = match (samples_per_pixel, photometric_name.as_str()) {
            (1, "MONOCHROME2") => Photometric::Monochrome2,
            (1, "MONOCHROME1") => Photometric::Monochrome1,
            (3, "RGB" | "YBR_ICT" | "YBR_RCT") => Photometric::Rgb,
            (3, "YBR_FULL") => Photometric::YbrFull,
            (3, "YBR_FULL_422") => Photometric::YbrFull422,
            (1 | 3, name) => {
                return Err(DecodeError::Unsupported {
                    format: F,
                    detail: format!(
                        "PhotometricInterpretation '{name}' with {samples_per_pixel} samples \
                         per pixel; read are MONOCHROME1, MONOCHROME2 (1 sample) and RGB, \
                         YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT (3 samples)"
                    ),
                });
            }
            (n, _) => {
                return Err(bad(
                    SAMPLES_PER_PIXEL,
                    "SamplesPerPixel",
                    format!("{n}; expected 1 (grey) or 3 (colour)"),
                ));
            }
        };
        let planar = ds.us(PLANAR_CONFIGURATION, "PlanarConfiguration")? == Some(1);
        let frames = match ds.text(NUMBER_OF_FRAMES) {
            None => 1,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(bad(
                        NUMBER_OF_FRAMES,
                        "NumberOfFrames",
                        format!("'{s}'; expected a positive integer"),
                    ));
                }
            },
        };
        Ok(Self {
            rows: usize::from(rows),
            columns: usize::from(columns),
            samples_per_pixel,
            photometric_name,
            photometric,
            planar,
            frames,
            bits_allocated,
            bits_stored,
            high_bit,
            signed,
        })
    }

    /// Pixels in a frame.
    fn pixels(&self) -> usize {
        self.rows * self.columns
    }

    /// The stored value of a raw sample: the BitsStored bits ending at HighBit (`shift` for
    /// native data; compressed data is right-aligned), as two's complement when signed.
    fn stored_value(&self, raw: u32, shift: bool) -> i32 {
        let bits = u32::from(self.bits_stored);
        let offset = if shift {
            u32::from(self.high_bit) + 1 - bits
        } else {
            0
        };
        let mask = (1u32 << bits) - 1;
        let v = (raw >> offset) & mask;
        if self.signed && v >> (bits - 1) & 1 == 1 {
            (i64::from(v) - (1i64 << bits)) as i32
        } else {
            v as i32
        }
    }
}

/// The first frame's samples.
#[derive(Debug)]
enum Frame {
    /// One stored value per pixel (monochrome).
    Grey(Vec<i32>),
    /// R, G, B stored values per pixel, interleaved.
    Rgb(Vec<i32>),
    /// The luma (Y) of a colour pixel.
    Luma(Vec<i32>),
}

/// Decodes the first frame of the pixel data.
fn first_frame(
    ds: &DataSet<'_>,
    syntax: TransferSyntax,
    m: &PixelModule,
    limits: &DecodeLimits,
) -> Result<Frame, DecodeError> {
    match (syntax, &ds.pixel_data) {
        (
            TransferSyntax::ImplicitLe | TransferSyntax::ExplicitLe | TransferSyntax::DeflatedLe,
            PixelData::Native(bytes),
        ) => native_frame(bytes, m),
        (_, PixelData::Native(_)) => Err(corrupt(
            "native (defined-length) Pixel Data in a transfer syntax that encapsulates it",
        )),
        (_, PixelData::Encapsulated { offsets, fragments }) => {
            let data = first_frame_bytes(offsets, fragments, m.frames)?;
            match syntax {
                TransferSyntax::EncapsulatedUncompressed => native_frame(&data, m),
                TransferSyntax::Rle => rle_frame(&data, m),
                TransferSyntax::Jpeg => jpeg_frame(&data, m, limits),
                TransferSyntax::Jpeg2000 => j2k_frame(&data, m, limits),
                _ => Err(corrupt(
                    "encapsulated Pixel Data in an uncompressed transfer syntax",
                )),
            }
        }
    }
}

/// The bytes of the first frame of encapsulated pixel data: all fragments for a single
/// frame; else the fragments before the second Basic Offset Table entry, or the first
/// fragment when there is one fragment per frame.
fn first_frame_bytes(
    offsets: &[u32],
    fragments: &[&[u8]],
    frames: usize,
) -> Result<Vec<u8>, DecodeError> {
    if fragments.is_empty() {
        return Err(corrupt("encapsulated Pixel Data holds no fragments"));
    }
    if frames == 1 {
        return Ok(fragments.concat());
    }
    if let [first, second, ..] = offsets {
        let mut out = Vec::new();
        let mut item_offset = 0u64;
        for fragment in fragments {
            if item_offset >= u64::from(*second) {
                break;
            }
            if item_offset >= u64::from(*first) {
                out.extend_from_slice(fragment);
            }
            item_offset += 8 + fragment.len() as u64;
        }
        if out.is_empty() {
            return Err(corrupt(
                "the Basic Offset Table points at no fragment for the first frame",
            ));
        }
        return Ok(out);
    }
    if fragments.len() == frames {
        return Ok(fragments[0].to_vec());
    }
    Err(DecodeError::Unsupported {
        format: F,
        detail: format!(
            "{frames} frames in {} fragments without a Basic Offset Table: the first frame's \
             fragments cannot be told apart",
            fragments.len()
        ),
    })
}

/// The first frame of native little-endian data.
fn native_frame(bytes: &[u8], m: &PixelModule) -> Result<Frame, DecodeError> {
    let bytes_per_sample = usize::from(m.bits_allocated / 8);
    let pixels = m.pixels();
    let raw_at = |i: usize| -> u32 {
        if bytes_per_sample == 2 {
            u32::from(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]))
        } else {
            u32::from(bytes[i])
        }
    };
    let samples_needed = match m.photometric {
        Photometric::YbrFull422 => 2 * pixels,
        _ => pixels * m.samples_per_pixel,
    };
    let needed = samples_needed * bytes_per_sample;
    if bytes.len() < needed {
        return Err(corrupt(format!(
            "Pixel Data holds {} bytes; the first {}x{} frame needs {needed}",
            bytes.len(),
            m.columns,
            m.rows
        )));
    }
    let frame = match m.photometric {
        Photometric::Monochrome1 | Photometric::Monochrome2 => Frame::Grey(
            (0..pixels)
                .map(|i| m.stored_value(raw_at(i), true))
                .collect(),
        ),
        Photometric::YbrFull422 => {
            // Y1 Y2 Cb Cr for each pair of pixels along a row.
            let luma_index = |p: usize| {
                let (row, col) = (p / m.columns, p % m.columns);
                let row_start = row * 2 * m.columns;
                row_start + (col / 2) * 4 + col % 2
            };
            Frame::Luma(
                (0..pixels)
                    .map(|p| m.stored_value(raw_at(luma_index(p)), true))
                    .collect(),
            )
        }
        Photometric::Rgb | Photometric::YbrFull => {
            let index = |p: usize, s: usize| {
                if m.planar { s * pixels + p } else { p * 3 + s }
            };
            if m.photometric == Photometric::YbrFull {
                Frame::Luma(
                    (0..pixels)
                        .map(|p| m.stored_value(raw_at(index(p, 0)), true))
                        .collect(),
                )
            } else {
                Frame::Rgb(
                    (0..pixels * 3)
                        .map(|i| m.stored_value(raw_at(index(i / 3, i % 3)), true))
                        .collect(),
                )
            }
        }
    };
    Ok(frame)
}

/// The first frame of RLE Lossless data.
fn rle_frame(data: &[u8], m: &PixelModule) -> Result<Frame, DecodeError> {
    if m.photometric == Photometric::YbrFull422 {
        return Err(corrupt(
            "RLE Lossless with YBR_FULL_422 (RLE data is never subsampled)",
        ));
    }
    let bytes_per_sample = usize::from(m.bits_allocated / 8);
    let pixels = m.pixels();
    let planes = codecs::rle_decode(data, m.samples_per_pixel * bytes_per_sample, pixels)?;
    // Sample s of pixel p: segments s * bytes_per_sample.., most significant byte first.
    let raw = |p: usize, s: usize| -> u32 {
        (0..bytes_per_sample).fold(0u32, |acc, b| {
            (acc << 8) | u32::from(planes[s * bytes_per_sample + b][p])
        })
    };
    Ok(match m.photometric {
        Photometric::Monochrome1 | Photometric::Monochrome2 => Frame::Grey(
            (0..pixels)
                .map(|p| m.stored_value(raw(p, 0), true))
                .collect(),
        ),
        Photometric::YbrFull => Frame::Luma(
            (0..pixels)
                .map(|p| m.stored_value(raw(p, 0), true))
                .collect(),
        ),
        _ => Frame::Rgb(
            (0..pixels * 3)
                .map(|i| m.stored_value(raw(i / 3, i % 3), true))
                .collect(),
        ),
    })
}

/// Checks that a decoded codestream has the size the DICOM header declares.
fn check_size(what: &str, width: usize, height: usize, m: &PixelModule) -> Result<(), DecodeError> {
    if (width, height) != (m.columns, m.rows) {
        return Err(corrupt(format!(
            "the {what} frame is {width}x{height} pixels; Columns x Rows say {}x{}",
            m.columns, m.rows
        )));
    }
    Ok(())
}

/// The first frame of JPEG (baseline, extended, lossless) data.
fn jpeg_frame(data: &[u8], m: &PixelModule, limits: &DecodeLimits) -> Result<Frame, DecodeError> {
    let transform = match m.photometric {
        Photometric::Monochrome1 | Photometric::Monochrome2 => None,
        Photometric::Rgb if m.photometric_name == "RGB" => Some(ColorTransform::RGB),
        _ => Some(ColorTransform::YCbCr),
    };
    let frame = codecs::decode_jpeg(data, limits, F, transform)?;
    check_size("JPEG", frame.width, frame.height, m)?;
    if frame.components != m.samples_per_pixel {
        return Err(corrupt(format!(
            "the JPEG frame has {} components; SamplesPerPixel is {}",
            frame.components, m.samples_per_pixel
        )));
    }
    let values = frame
        .samples
        .into_u16()
        .iter()
        .map(|&s| m.stored_value(u32::from(s), false))
        .collect();
    Ok(if frame.components == 1 {
        Frame::Grey(values)
    } else {
        Frame::Rgb(values)
    })
}

/// The first frame of JPEG 2000 data.
fn j2k_frame(data: &[u8], m: &PixelModule, limits: &DecodeLimits) -> Result<Frame, DecodeError> {
    let frame = codecs::decode_j2k(data, limits)?;
    check_size("JPEG 2000", frame.width, frame.height, m)?;
    if frame.planes.len() != m.samples_per_pixel {
        return Err(corrupt(format!(
            "the JPEG 2000 frame has {} components; SamplesPerPixel is {}",
            frame.planes.len(),
            m.samples_per_pixel
        )));
    }
    if frame.precision > 16 {
        return Err(corrupt("JPEG 2000 precision above 16 bits"));
    }
    let value = |v: i32| m.stored_value(v as u32, false);
    Ok(match frame.planes.as_slice() {
        [grey] => Frame::Grey(grey.iter().map(|&v| value(v)).collect()),
        [r, g, b] => Frame::Rgb(
            r.iter()
                .zip(g)
                .zip(b)
                .flat_map(|((&r, &g), &b)| [value(r), value(g), value(b)])
                .collect(),
        ),
        _ => Err(corrupt("JPEG 2000 frame with neither 1 nor 3 components"))?,
    })
}

/// The VOI window of the header, if usable: centre, width, function.
fn window(ds: &DataSet<'_>) -> Option<(f64, f64, VoiFunction)> {
    let center = ds.number(WINDOW_CENTER, "WindowCenter").ok()??;
    let width = ds.number(WINDOW_WIDTH, "WindowWidth").ok()??;
    let function = match ds.text(VOI_LUT_FUNCTION).as_deref() {
        Some("LINEAR_EXACT") => VoiFunction::LinearExact,
        Some("SIGMOID") => VoiFunction::Sigmoid,
        _ => VoiFunction::Linear,
    };
    let usable = match function {
        VoiFunction::Linear => width >= 1.0,
        _ => width > 0.0,
    };
    usable.then_some((center, width, function))
}

/// The VOI LUT functions of PS3.3 C.11.2.1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// Maps a modality value to [0, 1] through a window.
fn apply_window(x: f64, center: f64, width: f64, function: VoiFunction) -> f64 {
    match function {
        VoiFunction::Linear => {
            let (c, w) = (center - 0.5, width - 1.0);
            if x <= c - w / 2.0 {
                0.0
            } else if x > c + w / 2.0 {
                1.0
            } else {
                (x - c) / w + 0.5
            }
        }
        VoiFunction::LinearExact => {
            if x <= center - width / 2.0 {
                0.0
            } else if x > center + width / 2.0 {
                1.0
            } else {
                (x - center) / width + 0.5
            }
        }
        VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - center) / width).exp()),
    }
}

/// An intensity as stored: clamped to [0, 1], NaN (from absurd rescale values) as 0.
fn unit(y: f64) -> f32 {
    if y.is_nan() {
        0.0
    } else {
        y.clamp(0.0, 1.0) as f32
    }
}

/// Grey intensities of the first frame, following the module docs' steps.
fn to_grey(frame: &Frame, m: &PixelModule, ds: &DataSet<'_>) -> Result<Vec<f32>, DecodeError> {
    let full_scale = f64::from((1u32 << m.bits_stored) - 1);
    let pixels = match frame {
        Frame::Rgb(values) => values
            .chunks_exact(3)
            .map(|px| {
                let y = luma_bt601(f64::from(px[0]), f64::from(px[1]), f64::from(px[2]));
                unit(y / full_scale)
            })
            .collect(),
        Frame::Luma(values) => values
            .iter()
            .map(|&y| unit(f64::from(y) / full_scale))
            .collect(),
        Frame::Grey(values) => {
            let slope = ds.number(RESCALE_SLOPE, "RescaleSlope")?.unwrap_or(1.0);
            let intercept = ds
                .number(RESCALE_INTERCEPT, "RescaleIntercept")?
                .unwrap_or(0.0);
            let modality = |v: i32| f64::from(v) * slope + intercept;
            let invert = m.photometric == Photometric::Monochrome1;
            let polarity = |y: f64| if invert { 1.0 - y } else { y };
            match window(ds) {
                Some((center, width, function)) => values
                    .iter()
                    .map(|&v| unit(polarity(apply_window(modality(v), center, width, function))))
                    .collect(),
                None => {
                    let (lo, hi) = values
                        .iter()
                        .map(|&v| modality(v))
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                            (lo.min(x), hi.max(x))
                        });
                    let range = hi - lo;
                    values
                        .iter()
                        .map(|&v| {
                            let y = if range > 0.0 {
                                (modality(v) - lo) / range
                            } else {
                                0.0
                            };
                            unit(polarity(y))
                        })
                        .collect()
                }
            }
        }
    };
    Ok(pixels)
}

/// The [`DicomTags`] of a data set.
fn read_tags(ds: &DataSet<'_>, m: &PixelModule, transfer_syntax: String) -> DicomTags {
    let sex = ds.text(PATIENT_SEX).and_then(|s| Sex::parse(&s).ok());
    let age_years = ds
        .text(PATIENT_AGE)
        .and_then(|s| parse_age_string(&s))
        .or_else(|| {
            let birth = parse_date(&ds.text(PATIENT_BIRTH_DATE)?)?;
            let study = [STUDY_DATE, SERIES_DATE, ACQUISITION_DATE, CONTENT_DATE]
                .iter()
                .find_map(|&tag| parse_date(&ds.text(tag)?))?;
            completed_years(birth, study)
        });
    let view = ds
        .text(VIEW_POSITION)
        .and_then(|s| ViewPosition::parse(&s).ok());
    DicomTags {
        sex,
        age_years,
        view,
        modality: ds.text(MODALITY),
        photometric: m.photometric_name.clone(),
        bits_stored: m.bits_stored,
        transfer_syntax,
    }
}

/// A DICOM age string (AS), `nnnD`, `nnnW`, `nnnM` or `nnnY`, in years: days and weeks
/// over 365.25 days a year, months over 12. `None` when malformed.
pub(super) fn parse_age_string(s: &str) -> Option<f32> {
    let s = s.trim();
    if !s.is_ascii() {
        return None;
    }
    let unit = s.chars().last()?.to_ascii_uppercase();
    let digits = &s[..s.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: f64 = digits.parse().ok()?;
    let years = match unit {
        'Y' => n,
        'M' => n / 12.0,
        'W' => n * 7.0 / 365.25,
        'D' => n / 365.25,
        _ => return None,
    };
    Some(years as f32)
}

/// A DICOM date (DA), `YYYYMMDD` (or the old `YYYY.MM.DD`), as (year, month, day).
pub(super) fn parse_date(s: &str) -> Option<(u32, u32, u32)> {
    let digits: String = s.trim().chars().filter(|&c| c != '.').collect();
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year = digits[..4].parse().ok()?;
    let month = digits[4..6].parse().ok()?;
    let day = digits[6..].parse().ok()?;
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some((year, month, day))
}

/// Whole years from `birth` to `at`; `None` when `at` is before `birth`.
pub(super) fn completed_years(birth: (u32, u32, u32), at: (u32, u32, u32)) -> Option<f32> {
    if at < birth {
        return None;
    }
    let mut years = at.0 - birth.0;
    if (at.1, at.2) < (birth.1, birth.2) {
        years -= 1;
    }
    Some(years as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_strings() {
        assert_eq!(parse_age_string("064Y"), Some(64.0));
        assert_eq!(parse_age_string("006M"), Some(0.5));
        assert!((parse_age_string("052W").unwrap() - 0.99658).abs() < 1e-4);
        assert!((parse_age_string("030D").unwrap() - 30.0 / 365.25).abs() < 1e-6);
        assert_eq!(parse_age_string("64"), None);
        assert_eq!(parse_age_string("Y"), None);
        assert_eq!(parse_age_string("0-4Y"), None);
        assert_eq!(parse_age_string(""), None);
    }

    #[test]
    fn ages_from_dates() {
        let birth = parse_date("19400305").unwrap();
        assert_eq!(
            completed_years(birth, parse_date("20040826").unwrap()),
            Some(64.0)
        );
        assert_eq!(
            completed_years(birth, parse_date("20040304").unwrap()),
            Some(63.0)
        );
        assert_eq!(
            completed_years(birth, parse_date("20040305").unwrap()),
            Some(64.0)
        );
        assert_eq!(
            completed_years(birth, parse_date("19390101").unwrap()),
            None
        );
        assert_eq!(parse_date("1940.03.05"), Some((1940, 3, 5)));
        assert_eq!(parse_date("19401305"), None);
        assert_eq!(parse_date("1940035"), None);
    }

    #[test]
    fn windows_follow_the_standard() {
        // LINEAR with c = 100, w = 11: 0 up to 94.5, 1 above 105.5.
        let f = |x| apply_window(x, 100.0, 11.0, VoiFunction::Linear);
        assert_eq!(f(94.5), 0.0);
        assert_eq!(f(105.6), 1.0);
        assert!((f(99.5) - 0.5).abs() < 1e-12);
        let e = |x| apply_window(x, 100.0, 10.0, VoiFunction::LinearExact);
        assert_eq!(e(95.0), 0.0);
        assert!((e(100.0) - 0.5).abs() < 1e-12);
        let s = apply_window(100.0, 100.0, 10.0, VoiFunction::Sigmoid);
        assert!((s - 0.5).abs() < 1e-12);
    }

    #[test]
    fn stored_values_mask_shift_and_sign() {
        let mut m = PixelModule {
            rows: 1,
            columns: 1,
            samples_per_pixel: 1,
            photometric_name: "MONOCHROME2".into(),
            photometric: Photometric::Monochrome2,
            planar: false,
            frames: 1,
            bits_allocated: 16,
            bits_stored: 12,
            high_bit: 11,
            signed: false,
        };
        assert_eq!(m.stored_value(0xF123, true), 0x123);
        m.signed = true;
        assert_eq!(m.stored_value(0xFFFF, true), -1);
        assert_eq!(m.stored_value(0x0800, true), -2048);
        assert_eq!(m.stored_value(0x07FF, true), 2047);
        m.signed = false;
        m.high_bit = 15;
        assert_eq!(m.stored_value(0xF123, true), 0xF12);
        assert_eq!(m.stored_value(0x0F12, false), 0xF12);
    }
}
