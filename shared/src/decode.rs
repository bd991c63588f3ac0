//! Image files (PNG, JPEG, DICOM) to [`GreyImage`]: bytes in, grey pixels out.
//!
//! [`decode`] detects the format from the content (never from a file name), checks the
//! declared size against [`DecodeLimits`] before it allocates any pixel buffer, and turns
//! the samples into intensities in [0, 1] with 0 = black as displayed (MONOCHROME2):
//!
//! - **PNG** (1- to 16-bit, grey, grey + alpha, RGB, RGBA, palette): a sample `v` of a
//!   `b`-bit image with `b <= 8` becomes `v / (2^b - 1)`; low bit depths and palettes are
//!   expanded first. A 16-bit image is stretched from its own darkest to its brightest value,
//!   `(v - min) / (max - min)` (all 0 when they are equal), as a DICOM frame without a window
//!   is (below): 8-bit files are display images (NIH ChestX-ray14's PNGs, MIMIC-CXR-JPG's
//!   JPEGs), while a 16-bit X-ray usually holds the detector's 10 to 15 bits as read, which
//!   `v / 65535` would make a dark, flat grey. Alpha is dropped (the colour values are taken
//!   as they are, not blended).
//! - **JPEG** (baseline, extended 8-bit, progressive, lossless up to 16 bits): as PNG, with
//!   `b` the frame's sample precision (stretched above 8 bits). The EXIF orientation is not
//!   applied. CMYK is refused.
//! - **Colour** (PNG, JPEG, RGB DICOM) becomes grey by ITU-R BT.601 luma, see [`luma_bt601`]
//!   (the formula of PIL's `convert("L")`, kept in floating point instead of rounded to
//!   8 bits); a 16-bit colour image's luma is stretched as above.
//! - **DICOM**: see [`dicom`](self#dicom) below.
//!
//! # DICOM
//! Only files with the 128-byte preamble and the `DICM` prefix are recognised. The first frame
//! of the Pixel Data is decoded. Transfer syntaxes read:
//!
//! | UID | name |
//! |---|---|
//! | 1.2.840.10008.1.2 | Implicit VR Little Endian |
//! | 1.2.840.10008.1.2.1 | Explicit VR Little Endian |
//! | 1.2.840.10008.1.2.1.98 | Encapsulated Uncompressed Explicit VR Little Endian |
//! | 1.2.840.10008.1.2.1.99 | Deflated Explicit VR Little Endian |
//! | 1.2.840.10008.1.2.5 | RLE Lossless |
//! | 1.2.840.10008.1.2.4.50 | JPEG Baseline (Process 1) |
//! | 1.2.840.10008.1.2.4.51 | JPEG Extended (Process 2 & 4), 8-bit frames only |
//! | 1.2.840.10008.1.2.4.57 | JPEG Lossless, Non-Hierarchical (Process 14) |
//! | 1.2.840.10008.1.2.4.70 | JPEG Lossless, Non-Hierarchical, First-Order Prediction (SV1) |
//! | 1.2.840.10008.1.2.4.90 | JPEG 2000 Image Compression (Lossless Only) |
//! | 1.2.840.10008.1.2.4.91 | JPEG 2000 Image Compression |
//!
//! Not read, with [`DecodeError::UnsupportedTransferSyntax`] naming the UID: explicit VR big
//! endian (retired), JPEG-LS (no pure-Rust decoder; CharLS is C++), High-Throughput JPEG 2000
//! and JPEG 2000 Part 2 (the pure-Rust JPEG 2000 decoder reads Part 1 only), JPEG XL (a
//! pure-Rust decoder exists, but it would multiply this crate's build time), MPEG-2/4 and
//! HEVC video, JPIP references, retired JPEG processes and anything else unknown. 12-bit
//! frames of JPEG Extended (process 4) are refused with [`DecodeError::Unsupported`]: the
//! pure-Rust JPEG decoder reads 8-bit DCT and 2- to 16-bit lossless frames only.
//!
//! Grey (MONOCHROME1/2) frames go through these steps, in this order (PS3.3 C.7.6.3,
//! C.11.1, C.11.2):
//! 1. *stored value*: for native (uncompressed) data the `BitsStored` bits ending at `HighBit`
//!    are kept, `v = (raw >> (HighBit + 1 - BitsStored)) & (2^BitsStored - 1)` (bits above are
//!    masked off, whatever they hold); decoders of compressed data give `v` directly, masked
//!    the same way with no shift;
//! 2. *sign*: if `PixelRepresentation` is 1, `v` is read as a `BitsStored`-bit two's
//!    complement number;
//! 3. *modality LUT*: `m = v * RescaleSlope + RescaleIntercept` (1 and 0 when absent);
//! 4. *VOI*: with `WindowCenter` `c` and `WindowWidth` `w` (the first value of each), the
//!    `VOILUTFunction` maps `m` to [0, 1]: `LINEAR` (the default, and for unknown names):
//!    0 if `m <= c - 0.5 - (w - 1) / 2`, 1 if `m > c - 0.5 + (w - 1) / 2`, else
//!    `(m - (c - 0.5)) / (w - 1) + 0.5`; `LINEAR_EXACT`: 0 if `m <= c - w / 2`, 1 if
//!    `m > c + w / 2`, else `(m - c) / w + 0.5`; `SIGMOID`: `1 / (1 + exp(-4 (m - c) / w))`.
//!    Without a usable window (absent, unparsable, or `w < 1` for LINEAR, `w <= 0` otherwise)
//!    the frame is min-max scaled: `(m - min) / (max - min)` over the frame, all 0 when
//!    `max == min`;
//! 5. *polarity*: MONOCHROME1 (bright = low values) is inverted, `y = 1 - y`.
//!
//! Arithmetic is in `f64`, the result rounded once to `f32`. Lookup-table sequences (Modality
//! LUT Sequence, VOI LUT Sequence) are not applied; rescale and window are.
//!
//! Colour frames (RGB, YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT with 3 samples per pixel)
//! become grey by BT.601 luma of the decoded RGB (for native YBR data, the Y sample itself),
//! divided by `2^BitsStored - 1`; rescale and window do not apply to colour. PALETTE COLOR,
//! float pixel data, and 1- or 32-bit samples are refused.

mod codecs;
mod dicom;
mod pixels;

use std::fmt;

use crate::ehr::{Sex, ViewPosition};
pub use crate::error::DecodeError;
use crate::image::{GreyImage, Image, Intensity};

/// The file formats [`decode`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Portable Network Graphics.
    Png,
    /// JPEG (JFIF, EXIF or bare).
    Jpeg,
    /// DICOM Part 10 file (preamble + `DICM`).
    Dicom,
}

impl ImageFormat {
    /// The format of `bytes` by its magic numbers: PNG signature, JPEG SOI marker, or `DICM`
    /// at offset 128. `None` for anything else.
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
        if bytes.starts_with(PNG_SIGNATURE) {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.get(128..132) == Some(b"DICM") {
            Some(Self::Dicom)
        } else {
            None
        }
    }

    /// The usual name: `PNG`, `JPEG`, `DICOM`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
            Self::Dicom => "DICOM",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bounds on the declared image size, checked before pixel buffers are allocated (a PNG of a
/// few hundred bytes can declare 100000 x 100000 pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Smallest accepted width or height, in pixels.
    pub min_side: usize,
    /// Largest accepted width or height, in pixels.
    pub max_side: usize,
    /// Largest accepted `width * height`, in pixels.
    pub max_pixels: usize,
}

impl Default for DecodeLimits {
    /// 16384 pixels a side and 64 Mpx (`64 * 2^20`) in all: well above any chest
    /// radiograph (detectors reach about 4300 x 4300). At the limit the grey result alone
    /// takes 256 MiB of `f32`, and decoding needs a few times that, so a caller with less
    /// memory (a browser tab) may want smaller limits.
    ///
    /// The smallest side accepted is 16 pixels, one ViT patch: anything smaller cannot be a
    /// radiograph (a thumbnail, a tracking pixel, a mislabelled icon) and would only be
    /// blown up into a uniform grey view.
    fn default() -> Self {
        Self {
            min_side: 16,
            max_side: 16384,
            max_pixels: 64 << 20,
        }
    }
}

impl DecodeLimits {
    /// Refuses a zero or too large `width` x `height` of `format`. Whatever the limits say,
    /// sizes whose buffers (up to 16 bytes a pixel) would not fit the address space are
    /// refused too, so that no size arithmetic downstream can overflow.
    pub fn check(&self, format: ImageFormat, width: u64, height: u64) -> Result<(), DecodeError> {
        if width == 0 || height == 0 {
            return Err(DecodeError::ZeroSize {
                format,
                width,
                height,
            });
        }
        if width < self.min_side as u64 || height < self.min_side as u64 {
            return Err(DecodeError::TooSmall {
                format,
                width,
                height,
                min_side: self.min_side,
            });
        }
        let pixels = width.saturating_mul(height);
        let addressable = pixels
            .checked_mul(16)
            .is_some_and(|bytes| bytes <= isize::MAX as u64);
        let too_large = width > self.max_side as u64
            || height > self.max_side as u64
            || pixels > self.max_pixels as u64
            || !addressable;
        if too_large {
            return Err(DecodeError::TooLarge {
                format,
                width,
                height,
                pixels,
                max_side: self.max_side,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }

    /// The most bytes one decoded frame within these limits may take: `max_pixels` pixels of
    /// 4 samples of 2 bytes (RGBA, 16 bits).
    pub(crate) fn max_frame_bytes(&self) -> usize {
        self.max_pixels.saturating_mul(8)
    }
}

/// The DICOM header fields the browser form is prefilled from, and a few that say how the
/// pixels were read.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomTags {
    /// PatientSex (0010,0040); `None` when absent or not M/F (e.g. `O`).
    pub sex: Option<Sex>,
    /// Age at the study in years: PatientAge (0010,1010, `nnnD/W/M/Y`; days and weeks over
    /// 365.25 days a year, months over 12), else the completed years between
    /// PatientBirthDate (0010,0030) and the first present of StudyDate, SeriesDate,
    /// AcquisitionDate, ContentDate. `None` when neither gives a valid non-negative age.
    pub age_years: Option<f32>,
    /// ViewPosition (0018,5101) as read by [`ViewPosition::parse`]; `None` when absent or
    /// not one of PA, AP, LATERAL/LAT, LL.
    pub view: Option<ViewPosition>,
    /// Modality (0008,0060), e.g. `CR`, `DX`; `None` when absent or empty.
    pub modality: Option<String>,
    /// PhotometricInterpretation (0028,0004), e.g. `MONOCHROME1`.
    pub photometric: String,
    /// BitsStored (0028,0101).
    pub bits_stored: u16,
    /// The transfer syntax UID (0002,0010), e.g. `1.2.840.10008.1.2.1`.
    pub transfer_syntax: String,
}

/// A decoded image and what was learnt on the way; `T` is its pixel type (floats, or
/// 16-bit levels from [`decode_downscaled16`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T = f32> {
    /// The grey image, intensities in [0, 1], 0 = black as displayed.
    pub image: Image<T>,
    /// `(width, height)` of the image in the file, before any downscaling
    /// ([`decode_downscaled`]).
    pub original_size: (usize, usize),
    /// The format the bytes were in.
    pub format: ImageFormat,
    /// Bits per sample in the file: the PNG bit depth, the JPEG sample precision, the DICOM
    /// BitsStored.
    pub bit_depth: u8,
    /// Header fields, for DICOM files only.
    pub dicom: Option<DicomTags>,
}

/// Decodes a PNG, JPEG or DICOM file held in `bytes` into a grey image (see the
/// [module docs](self) for the rules). Never panics; any malformed, truncated, unsupported or
/// too large input is an `Err` that says what was wrong.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    decode_with(bytes, limits, None)
}

/// [`decode`], then downscaled so that the shorter side is at most `shorter_side` pixels
/// ([`resize_shorter_side`](crate::views::resize_shorter_side); smaller images are returned
/// as they are). An 8-bit grey JPEG or PNG (most radiographs) is resampled straight from the
/// decoder's bytes, skipping the full-size float image that [`decode`] builds; the result
/// equals `resize_shorter_side(&decode(..)?.image, ..)` up to float rounding.
pub fn decode_downscaled(
    bytes: &[u8],
    limits: &DecodeLimits,
    shorter_side: usize,
) -> Result<Decoded, DecodeError> {
    decode_with(bytes, limits, Some(shorter_side.max(1)))
}

/// [`decode_downscaled`] with the image as 16-bit levels
/// ([`Grey16`](crate::image::Grey16)), as the trainer's loader keeps it: an 8-bit grey JPEG
/// or PNG is resampled straight to levels; any other image is decoded and downscaled as
/// floats, then rounded to the nearest level. The levels are those of
/// `decode_downscaled`'s floats rounded, up to float rounding.
pub fn decode_downscaled16(
    bytes: &[u8],
    limits: &DecodeLimits,
    shorter_side: usize,
) -> Result<Decoded<u16>, DecodeError> {
    decode_with(bytes, limits, Some(shorter_side.max(1)))
}

/// `img` downscaled so that its shorter side is `shorter_side` when its own is longer
/// ([`resize_shorter_side`](crate::views::resize_shorter_side)), in pixel type `O`.
pub(crate) fn fit<O: Intensity>(img: GreyImage, shorter_side: Option<usize>) -> Image<O> {
    match shorter_side {
        Some(side) if img.width.min(img.height) > side => {
            O::from_grey(crate::views::resize_shorter_side(&img, side))
        }
        _ => O::from_grey(img),
    }
}

fn decode_with<O: Intensity>(
    bytes: &[u8],
    limits: &DecodeLimits,
    shorter_side: Option<usize>,
) -> Result<Decoded<O>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = ImageFormat::detect(bytes)
        .ok_or_else(|| DecodeError::UnknownFormat(describe_unknown(bytes)))?;
    match format {
        ImageFormat::Png => {
            let file = codecs::decode_png(bytes, limits, shorter_side)?;
            Ok(Decoded {
                image: file.image,
                original_size: file.original_size,
                format,
                bit_depth: file.bit_depth,
                dicom: None,
            })
        }
        ImageFormat::Jpeg => {
            let file = codecs::decode_jpeg_file(bytes, limits, shorter_side)?;
            Ok(Decoded {
                image: file.image,
                original_size: file.original_size,
                format,
                bit_depth: file.bit_depth,
                dicom: None,
            })
        }
        ImageFormat::Dicom => {
            let decoded = pixels::decode_dicom(bytes, limits)?;
            Ok(Decoded {
                image: fit(decoded.image, shorter_side),
                original_size: decoded.original_size,
                format: decoded.format,
                bit_depth: decoded.bit_depth,
                dicom: decoded.dicom,
            })
        }
    }
}

/// ITU-R BT.601 luma of an RGB triple, in the triple's own units:
/// `0.299 R + 0.587 G + 0.114 B`. PIL's `convert("L")` uses the same weights and rounds the
/// result to an 8-bit integer; here it stays a float.
pub fn luma_bt601(r: f64, g: f64, b: f64) -> f64 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// Says what unrecognised bytes look like: the first 16 as hex and as text, and a guess
/// when they are a known image or document format that is not read here.
fn describe_unknown(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(16)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02X}")).collect();
    let text: String = head
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    let mut out = format!(
        "the {} bytes start with {} (\"{}\")",
        bytes.len(),
        hex.join(" "),
        text
    );
    if let Some(guess) = guess_other_format(bytes) {
        out.push_str(&format!(", which looks like {guess}"));
    }
    out
}

/// Names formats that are recognisable but not read by [`decode`].
fn guess_other_format(bytes: &[u8]) -> Option<&'static str> {
    const KNOWN: &[(&[u8], &str)] = &[
        (b"GIF8", "a GIF image"),
        (b"BM", "a BMP image"),
        (b"II*\0", "a TIFF image"),
        (b"MM\0*", "a TIFF image"),
        (b"\0\0\0\x0CjP  ", "a JPEG 2000 (JP2) image"),
        (b"\xFF\x4F\xFF\x51", "a JPEG 2000 codestream"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"\x1F\x8B", "a gzip archive"),
    ];
    if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        return Some("a WebP image");
    }
    KNOWN
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_content() {
        assert_eq!(
            ImageFormat::detect(b"\x89PNG\r\n\x1a\nrest"),
            Some(ImageFormat::Png)
        );
        assert_eq!(
            ImageFormat::detect(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ImageFormat::Jpeg)
        );
        let mut dicom = vec![0u8; 132];
        dicom[128..132].copy_from_slice(b"DICM");
        assert_eq!(ImageFormat::detect(&dicom), Some(ImageFormat::Dicom));
        assert_eq!(ImageFormat::detect(b"hello"), None);
    }

    #[test]
    fn unknown_format_message_shows_the_first_bytes() {
        let err = decode(b"GIF89a\x01\x00", &DecodeLimits::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("47 49 46 38 39 61"), "{text}");
        assert!(text.contains("\"GIF89a..\""), "{text}");
        assert!(text.contains("GIF image"), "{text}");
    }

    #[test]
    fn limits_refuse_zero_and_oversized() {
        let limits = DecodeLimits {
            min_side: 2,
            max_side: 100,
            max_pixels: 5000,
        };
        assert!(limits.check(ImageFormat::Png, 100, 50).is_ok());
        assert!(limits.check(ImageFormat::Png, 2, 2).is_ok());
        let err = limits.check(ImageFormat::Png, 1, 30).unwrap_err();
        assert!(matches!(err, DecodeError::TooSmall { .. }));
        assert_eq!(
            err.to_string(),
            "PNG image is 1x30 pixels, too small to be a radiograph: expected at least 2 \
             pixels a side"
        );
        assert!(matches!(
            limits.check(ImageFormat::Png, 0, 5),
            Err(DecodeError::ZeroSize { .. })
        ));
        assert!(matches!(
            limits.check(ImageFormat::Png, 101, 2),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            limits.check(ImageFormat::Png, 100, 51),
            Err(DecodeError::TooLarge { .. })
        ));
        let unlimited = DecodeLimits {
            min_side: 1,
            max_side: usize::MAX,
            max_pixels: usize::MAX,
        };
        assert!(unlimited.check(ImageFormat::Png, 1 << 20, 1 << 20).is_ok());
        assert!(matches!(
            unlimited.check(ImageFormat::Png, u64::MAX, 2),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn bt601_weights() {
        assert!((luma_bt601(255.0, 0.0, 0.0) - 76.245).abs() < 1e-9);
        assert!((luma_bt601(10.0, 10.0, 10.0) - 10.0).abs() < 1e-9);
    }
}
