//! Wrappers around the pure-Rust codecs (png, zune-jpeg and jpeg-decoder, hayro-jpeg2000,
//! miniz_oxide) plus the DICOM RLE decoder. Each checks the declared size against
//! [`DecodeLimits`] before it lets a codec allocate the pixels, and turns codec errors into
//! [`DecodeError`]s.

use std::io::Cursor;

use jpeg_decoder::ColorTransform;

use super::{DecodeLimits, ImageFormat, luma_bt601};
use crate::error::DecodeError;
use crate::image::{GreyImage, Image, Intensity};

fn corrupt(format: ImageFormat, detail: impl Into<String>) -> DecodeError {
    DecodeError::Corrupt {
        format,
        detail: detail.into(),
    }
}

fn unsupported(format: ImageFormat, detail: impl Into<String>) -> DecodeError {
    DecodeError::Unsupported {
        format,
        detail: detail.into(),
    }
}

/// Grey intensities in [0, 1] from interleaved integer samples of `channels` per pixel
/// (1 or 2: grey [+ alpha]; 3 or 4: RGB [+ alpha]), whose full scale is `max`. Alpha is
/// dropped; colour goes through [`luma_bt601`]. `samples.len()` must be a multiple of
/// `channels`.
///
/// Up to 8 bits (`max <= 255`) a value `v` becomes `v / max`: such files are display images
/// (NIH ChestX-ray14's PNGs, MIMIC-CXR-JPG's and CheXpert's JPEGs). Deeper ones are
/// stretched from the image's own darkest to its brightest value, `(v - min) / (max - min)`
/// (all 0 when they are equal), as a DICOM frame without a window is: a 16-bit PNG of an
/// X-ray usually holds a detector's 10 to 15 bits as they were read, which `v / 65535`
/// would show as a dark, flat grey unlike the same film's display image.
fn grey_from_samples(samples: &[u16], channels: usize, max: f64) -> Vec<f32> {
    let deep = max > 255.0;
    let stretch = |values: &mut dyn Iterator<Item = f64>| -> (f64, f64) {
        if !deep {
            return (0.0, max);
        }
        values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
    };
    let unit = |v: f64, (lo, hi): (f64, f64)| {
        if hi > lo {
            ((v - lo) / (hi - lo)).clamp(0.0, 1.0) as f32
        } else {
            0.0
        }
    };
    if channels >= 3 {
        let luma: Vec<f64> = samples
            .chunks_exact(channels)
            .map(|px| luma_bt601(f64::from(px[0]), f64::from(px[1]), f64::from(px[2])))
            .collect();
        let range = stretch(&mut luma.iter().copied());
        return luma.into_iter().map(|v| unit(v, range)).collect();
    }
    let range = stretch(&mut samples.iter().step_by(channels).map(|&v| f64::from(v)));
    let grey = |v: f64| unit(v, range);
    // Grey: one division per possible sample value instead of one per pixel, with the same
    // arithmetic, so the result is identical. Worth it unless the image has fewer pixels
    // than the table has entries (65,536 at 16 bits).
    let values = max as usize + 1;
    if samples.len() / channels >= values {
        let table: Vec<f32> = (0..values).map(|v| grey(v as f64)).collect();
        let last = table.len() - 1;
        let look = |&v: &u16| table[usize::from(v).min(last)];
        return if channels == 1 {
            samples.iter().map(look).collect()
        } else {
            samples.iter().step_by(channels).map(look).collect()
        };
    }
    samples
        .iter()
        .step_by(channels)
        .map(|&v| grey(f64::from(v)))
        .collect()
}

/// A PNG or JPEG file decoded ([`decode_png`], [`decode_jpeg_file`]).
pub(super) struct FileImage<O> {
    /// The grey image, downscaled when asked.
    pub image: Image<O>,
    /// The PNG bit depth (1 to 16) or the JPEG sample precision.
    pub bit_depth: u8,
    /// `(width, height)` of the image in the file.
    pub original_size: (usize, usize),
}

/// Decodes a PNG file: the grey image, the file's bit depth (1 to 16) and its size. With
/// `shorter_side`, the image is also downscaled to that shorter side when its own is longer
/// ([`super::fit`]); an 8-bit grey image (NIH ChestX-ray14's) is then resampled straight
/// from its bytes to `O`, without a full-size float copy.
pub(super) fn decode_png<O: Intensity>(
    bytes: &[u8],
    limits: &DecodeLimits,
    shorter_side: Option<usize>,
) -> Result<FileImage<O>, DecodeError> {
    const F: ImageFormat = ImageFormat::Png;
    let png_err = |e: png::DecodingError| match e {
        png::DecodingError::LimitsExceeded => corrupt(
            F,
            "the decoder needed more memory than the decode limits allow",
        ),
        other => corrupt(F, other.to_string()),
    };
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: limits.max_frame_bytes(),
        },
    );
    // Palette to RGB(A), 1/2/4-bit grey scaled to 8 bits, tRNS to alpha; 16 bits kept.
    decoder.set_transformations(png::Transformations::EXPAND);
    let header = decoder.read_header_info().map_err(png_err)?;
    let (width, height) = (header.width, header.height);
    let file_bit_depth = header.bit_depth as u8;
    limits.check(F, u64::from(width), u64::from(height))?;

    let mut reader = decoder.read_info().map_err(png_err)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt(F, "the frame size overflows the address space"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(png_err)?;
    // Reads the rest up to IEND, so a file cut after its image data is still an error.
    reader.finish().map_err(png_err)?;

    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(corrupt(F, "palette was not expanded to RGB"));
        }
    };
    let data = buf.get(..frame.buffer_size()).unwrap_or(&buf);
    let (w, h) = (width as usize, height as usize);
    if let (1, png::BitDepth::Eight, Some(side)) = (channels, frame.bit_depth, shorter_side)
        && w.min(h) > side
        && data.len() == w * h
    {
        return Ok(FileImage {
            image: crate::views::downscale_grey8(data, w, h, side),
            bit_depth: file_bit_depth,
            original_size: (w, h),
        });
    }
    let (samples, max): (Vec<u16>, f64) = match frame.bit_depth {
        png::BitDepth::Sixteen => (
            data.chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect(),
            65535.0,
        ),
        png::BitDepth::Eight => (data.iter().map(|&b| u16::from(b)).collect(), 255.0),
        other => {
            return Err(corrupt(
                F,
                format!("expanded output has {} bits per sample", other as u8),
            ));
        }
    };
    if samples.len() != w * h * channels {
        return Err(corrupt(
            F,
            format!(
                "decoded {} samples, expected {w}x{h}x{channels}",
                samples.len()
            ),
        ));
    }
    let pixels = grey_from_samples(&samples, channels, max);
    let image = GreyImage::new(w, h, pixels)
        .ok_or_else(|| corrupt(F, "pixel count does not match the size"))?;
    Ok(FileImage {
        image: super::fit(image, shorter_side),
        bit_depth: file_bit_depth,
        original_size: (w, h),
    })
}

/// The frame header (SOFn) of a JPEG stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct JpegFrameHeader {
    /// The SOF marker's second byte: C0 baseline, C1 extended, C2 progressive, C3 lossless...
    pub marker: u8,
    /// Bits per sample, 2 to 16.
    pub precision: u8,
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels (0 means "defined later by a DNL marker", which is refused).
    pub height: u16,
    /// Number of components (1 grey, 3 colour).
    pub components: u8,
    /// Where the frame header's segment ends in the stream.
    pub end: usize,
}

/// Finds the first frame header by walking the marker segments the way jpeg-decoder does
/// (bytes between segments are skipped up to the next FF, fill FFs are skipped), so that the
/// header checked here is the one the decoder will use.
pub(super) fn jpeg_frame_header(
    bytes: &[u8],
    format: ImageFormat,
) -> Result<JpegFrameHeader, DecodeError> {
    let truncated = || corrupt(format, "JPEG stream ends before its frame header (SOF)");
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(corrupt(
            format,
            "JPEG stream does not start with the SOI marker FF D8",
        ));
    }
    let mut pos = 2;
    loop {
        while *bytes.get(pos).ok_or_else(truncated)? != 0xFF {
            pos += 1;
        }
        while *bytes.get(pos).ok_or_else(truncated)? == 0xFF {
            pos += 1;
        }
        let marker = *bytes.get(pos).ok_or_else(truncated)?;
        pos += 1;
        match marker {
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            0xD9 | 0xDA => {
                return Err(corrupt(
                    format,
                    "JPEG stream reaches a scan or its end before any frame header (SOF)",
                ));
            }
            _ => {}
        }
        let len_bytes = bytes.get(pos..pos + 2).ok_or_else(truncated)?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let seg = bytes.get(pos + 2..pos + 8).ok_or_else(truncated)?;
            return Ok(JpegFrameHeader {
                marker,
                precision: seg[0],
                height: u16::from_be_bytes([seg[1], seg[2]]),
                width: u16::from_be_bytes([seg[3], seg[4]]),
                components: seg[5],
                end: pos + len,
            });
        }
        if len < 2 {
            return Err(corrupt(
                format,
                format!("JPEG marker segment FF {marker:02X} has length {len}"),
            ));
        }
        pos += len;
    }
}

/// A decoded JPEG frame: `width * height * components` samples, right-aligned integers of
/// `precision` bits, interleaved (RGB for colour).
#[derive(Debug)]
pub(super) struct JpegFrame {
    pub width: usize,
    pub height: usize,
    pub components: usize,
    pub precision: u8,
    pub samples: JpegSamples,
}

/// The samples of a [`JpegFrame`]: bytes for precisions up to 8 bits, else 16-bit integers.
#[derive(Debug)]
pub(super) enum JpegSamples {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

impl JpegSamples {
    /// The samples as 16-bit integers (a copy for 8-bit frames).
    pub fn into_u16(self) -> Vec<u16> {
        match self {
            Self::U8(v) => v.into_iter().map(u16::from).collect(),
            Self::U16(v) => v,
        }
    }
}

/// Decodes one JPEG stream (any process jpeg-decoder reads: baseline, extended 8-bit,
/// progressive, lossless 2 to 16 bits) with grey or 3-component colour. `transform` forces
/// how 3 components are read (DICOM says it in PhotometricInterpretation); `None` leaves the
/// JFIF/Adobe markers to decide. 8-bit grey streams of the Huffman DCT processes go to
/// zune-jpeg ([`decode_grey_dct`]), every other one to jpeg-decoder.
///
/// jpeg-decoder's scaled IDCT (1/2, 1/4, 1/8) is deliberately not used to shrink large
/// images: it keeps only the low-frequency coefficients, which rings at burned-in text and
/// lead markers (up to 62/255 from a 2x2 average of the full decode on a Kermany sample,
/// where libjpeg-turbo's scaled decode stays within 10/255), for about 10 % of loading time.
pub(super) fn decode_jpeg(
    bytes: &[u8],
    limits: &DecodeLimits,
    format: ImageFormat,
    transform: Option<ColorTransform>,
) -> Result<JpegFrame, DecodeError> {
    let header = jpeg_frame_header(bytes, format)?;
    limits.check(format, u64::from(header.width), u64::from(header.height))?;
    let lossless = matches!(header.marker, 0xC3 | 0xC7 | 0xCB | 0xCF);
    match (header.components, header.precision) {
        (1, 2..=16) | (3, 8) if lossless || header.precision == 8 => {}
        (3, _) if lossless => {
            return Err(unsupported(
                format,
                format!(
                    "colour lossless JPEG of {} bits; colour is read at 8 bits only",
                    header.precision
                ),
            ));
        }
        (1 | 3, 12) => {
            return Err(unsupported(
                format,
                "12-bit DCT JPEG (process 4): the pure-Rust decoder reads 8-bit DCT and 2- to \
                 16-bit lossless JPEG only",
            ));
        }
        (4, _) => {
            return Err(unsupported(
                format,
                "CMYK/YCCK JPEG (4 components); expected grey or RGB/YCbCr",
            ));
        }
        (c, p) => {
            return Err(unsupported(
                format,
                format!(
                    "JPEG with {c} components of {p} bits; expected 1 component of 2 to 16 \
                     bits (lossless) or 8 bits, or 3 components of 8 bits"
                ),
            ));
        }
    }
    if header.components == 1 && header.precision == 8 && matches!(header.marker, 0xC0..=0xC2) {
        return decode_grey_dct(bytes, header, format);
    }
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(limits.max_frame_bytes());
    if let Some(t) = transform {
        decoder.set_color_transform(t);
    }
    let data = decoder.decode().map_err(|e| match e {
        jpeg_decoder::Error::Unsupported(feature) => {
            unsupported(format, format!("JPEG feature {feature:?}"))
        }
        other => corrupt(format, other.to_string()),
    })?;
    let (width, height) = (usize::from(header.width), usize::from(header.height));
    let components = usize::from(header.components);
    let pixels = width * height * components;
    if data.len() == pixels && header.precision <= 8 {
        return Ok(JpegFrame {
            width,
            height,
            components,
            precision: header.precision,
            samples: JpegSamples::U8(data),
        });
    }
    let samples: Vec<u16> = if data.len() == 2 * pixels && header.precision > 8 {
        // jpeg-decoder returns 16-bit samples in native byte order.
        data.chunks_exact(2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .collect()
    } else {
        return Err(corrupt(
            format,
            format!(
                "decoder returned {} bytes for a {width}x{height} frame of {components} \
                 components",
                data.len()
            ),
        ));
    };
    Ok(JpegFrame {
        width,
        height,
        components,
        precision: header.precision,
        samples: JpegSamples::U16(samples),
    })
}

/// Decodes an 8-bit grey JPEG of the DCT processes with Huffman coding (baseline,
/// extended, progressive: what radiographs are stored as) with zune-jpeg, which does on the
/// calling thread what jpeg-decoder does on two (it hands every row to a thread of its own
/// for the inverse DCT): 16 Kermany radiographs in 0.045 s against 0.049-0.053 s, the same
/// values (BENCHMARKS.md). `header` is the stream's frame header, already checked against
/// the limits. A stream that ends early is an error, not grey rows: zune-jpeg runs in strict
/// mode, and the end-of-image marker must be there.
fn decode_grey_dct(
    bytes: &[u8],
    header: JpegFrameHeader,
    format: ImageFormat,
) -> Result<JpegFrame, DecodeError> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let (width, height) = (usize::from(header.width), usize::from(header.height));
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::Luma)
        .set_max_width(width)
        .set_max_height(height)
        .set_strict_mode(true);
    // Entropy-coded data never holds FF D9 (an FF there is followed by 00 or a restart
    // marker), so what follows the frame header holds one only as the end of the image.
    // Searched from the end, where it is, so a whole file is not read twice.
    let rest = bytes.get(header.end..).unwrap_or_default();
    if !rest.windows(2).rev().any(|w| w == [0xFF, 0xD9]) {
        return Err(corrupt(
            format,
            "JPEG stream ends before its end-of-image marker (EOI)",
        ));
    }
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let data = decoder
        .decode()
        .map_err(|e| corrupt(format, format!("JPEG: {e}")))?;
    if data.len() != width * height {
        return Err(corrupt(
            format,
            format!(
                "decoder returned {} samples for a {width}x{height} grey frame",
                data.len()
            ),
        ));
    }
    Ok(JpegFrame {
        width,
        height,
        components: 1,
        precision: 8,
        samples: JpegSamples::U8(data),
    })
}

/// Decodes a JPEG file: the grey image, the sample precision and its size. With
/// `shorter_side`, the image is also downscaled to that shorter side when its own is longer
/// ([`super::fit`]); an 8-bit grey frame is then resampled straight from its bytes to `O`,
/// without a full-size float copy.
pub(super) fn decode_jpeg_file<O: Intensity>(
    bytes: &[u8],
    limits: &DecodeLimits,
    shorter_side: Option<usize>,
) -> Result<FileImage<O>, DecodeError> {
    let frame = decode_jpeg(bytes, limits, ImageFormat::Jpeg, None)?;
    let original_size = (frame.width, frame.height);
    let precision = frame.precision;
    let max = f64::from((1u32 << precision) - 1);
    let image = match (frame.samples, shorter_side) {
        (JpegSamples::U8(bytes), Some(side))
            if frame.components == 1 && precision == 8 && frame.width.min(frame.height) > side =>
        {
            crate::views::downscale_grey8(&bytes, frame.width, frame.height, side)
        }
        (samples, _) => {
            let pixels = grey_from_samples(&samples.into_u16(), frame.components, max);
            let image = GreyImage::new(frame.width, frame.height, pixels)
                .ok_or_else(|| corrupt(ImageFormat::Jpeg, "pixel count does not match the size"))?;
            super::fit(image, shorter_side)
        }
    };
    Ok(FileImage {
        image,
        bit_depth: precision,
        original_size,
    })
}

/// A decoded JPEG 2000 frame: one plane of `width * height` samples per component, rounded
/// to integers and clamped to the component's range (signed components as signed values).
#[derive(Debug)]
pub(super) struct J2kFrame {
    pub width: usize,
    pub height: usize,
    pub precision: u8,
    pub planes: Vec<Vec<i32>>,
}

/// Whether the first component of a JPEG 2000 codestream is signed, from its SIZ marker
/// segment (`Ssiz` bit 7), which the decoder reads but does not report.
fn j2k_first_component_signed(bytes: &[u8]) -> Option<bool> {
    let siz = bytes
        .windows(4)
        .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])?
        + 2;
    // FF51, Lsiz, Rsiz, 8 x 32-bit sizes and offsets, Csiz: 2 + 2 + 2 + 32 + 2 bytes.
    bytes.get(siz + 40).map(|ssiz| ssiz & 0x80 != 0)
}

/// Decodes a JPEG 2000 codestream (or JP2 file) of a DICOM frame.
pub(super) fn decode_j2k(bytes: &[u8], limits: &DecodeLimits) -> Result<J2kFrame, DecodeError> {
    const F: ImageFormat = ImageFormat::Dicom;
    let settings = hayro_jpeg2000::DecodeSettings::default();
    let image = hayro_jpeg2000::Image::new(bytes, &settings)
        .map_err(|e| corrupt(F, format!("JPEG 2000 codestream: {e}")))?;
    let (width, height) = (image.width(), image.height());
    limits.check(F, u64::from(width), u64::from(height))?;
    let precision = image.original_bit_depth();
    if !(1..=16).contains(&precision) {
        return Err(unsupported(
            F,
            format!("JPEG 2000 components of {precision} bits; expected 1 to 16"),
        ));
    }
    let signed = j2k_first_component_signed(bytes).ok_or_else(|| {
        corrupt(
            F,
            "JPEG 2000 codestream lacks a complete SIZ marker segment",
        )
    })?;
    let mut context = hayro_jpeg2000::DecoderContext::default();
    let decoded = image
        .decode(&mut context)
        .map_err(|e| corrupt(F, format!("JPEG 2000 codestream: {e}")))?;
    let (w, h) = (width as usize, height as usize);
    // The decoder adds the DC level shift 2^(p-1) to every component, signed ones included.
    let shift = if signed { 1i64 << (precision - 1) } else { 0 };
    let (lo, hi) = if signed {
        (-(1i64 << (precision - 1)), (1i64 << (precision - 1)) - 1)
    } else {
        (0, (1i64 << precision) - 1)
    };
    let mut planes = Vec::with_capacity(decoded.components().len());
    for (i, component) in decoded.components().iter().enumerate() {
        let samples = component.samples();
        if samples.len() != w * h {
            return Err(unsupported(
                F,
                format!(
                    "JPEG 2000 component {i} has {} samples for a {w}x{h} image (subsampled \
                     components are not read)",
                    samples.len()
                ),
            ));
        }
        planes.push(
            samples
                .iter()
                .map(|&s| ((s.round() as i64) - shift).clamp(lo, hi) as i32)
                .collect(),
        );
    }
    Ok(J2kFrame {
        width: w,
        height: h,
        precision,
        planes,
    })
}

/// Inflates the raw DEFLATE stream of a Deflated Explicit VR Little Endian data set, to at
/// most `max_len` bytes.
pub(super) fn inflate(deflated: &[u8], max_len: usize) -> Result<Vec<u8>, DecodeError> {
    use miniz_oxide::inflate::TINFLStatus;
    miniz_oxide::inflate::decompress_to_vec_with_limit(deflated, max_len).map_err(|e| {
        match e.status {
            TINFLStatus::HasMoreOutput => DecodeError::Unsupported {
                format: ImageFormat::Dicom,
                detail: format!(
                    "the deflated data set inflates to more than {max_len} bytes, the most one \
                 frame within the decode limits needs"
                ),
            },
            status => corrupt(
                ImageFormat::Dicom,
                format!("deflated data set cannot be inflated ({status:?})"),
            ),
        }
    })
}

/// Decodes one DICOM RLE Lossless frame (PS3.5 Annex G) into its byte segments: `segments`
/// planes of `segment_len` bytes each (for 16-bit samples the high byte's segment comes
/// first; samples follow one another).
pub(super) fn rle_decode(
    frame: &[u8],
    segments: usize,
    segment_len: usize,
) -> Result<Vec<Vec<u8>>, DecodeError> {
    const F: ImageFormat = ImageFormat::Dicom;
    let header = frame
        .get(..64)
        .ok_or_else(|| corrupt(F, "RLE frame shorter than its 64-byte header"))?;
    let word = |i: usize| {
        u32::from_le_bytes([
            header[4 * i],
            header[4 * i + 1],
            header[4 * i + 2],
            header[4 * i + 3],
        ]) as usize
    };
    let count = word(0);
    if count != segments {
        return Err(corrupt(
            F,
            format!("RLE header declares {count} segments; the image attributes need {segments}"),
        ));
    }
    let offsets: Vec<usize> = (1..=count).map(word).collect();
    let mut planes = Vec::with_capacity(count);
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(frame.len());
        let segment = frame
            .get(start..end)
            .filter(|_| start >= 64)
            .ok_or_else(|| {
                corrupt(
                    F,
                    format!(
                        "RLE segment {i} spans bytes {start}..{end} of a {}-byte frame",
                        frame.len()
                    ),
                )
            })?;
        planes.push(unpack_bits(segment, segment_len).ok_or_else(|| {
            corrupt(
                F,
                format!("RLE segment {i} decodes to fewer than {segment_len} bytes"),
            )
        })?);
    }
    Ok(planes)
}

/// PackBits: a header byte `n` in 0..=127 copies `n + 1` literal bytes, -127..=-1 repeats the
/// next byte `1 - n` times, -128 does nothing. Output beyond `len` is dropped; `None` when
/// the input ends first.
fn unpack_bits(input: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut pos = 0;
    while out.len() < len {
        let n = *input.get(pos)? as i8;
        pos += 1;
        if n >= 0 {
            let count = n as usize + 1;
            let literal = input.get(pos..pos + count)?;
            pos += count;
            let room = len - out.len();
            out.extend_from_slice(&literal[..count.min(room)]);
        } else if n != -128 {
            let count = (1 - isize::from(n)) as usize;
            let value = *input.get(pos)?;
            pos += 1;
            let room = len - out.len();
            out.extend(std::iter::repeat_n(value, count.min(room)));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_jpegs_decode_as_jpeg_decoder_decodes_them() {
        // The two decoders may round the inverse DCT differently, by one level at most.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/samples");
        for name in [
            "person1946_bacteria_4875.jpeg",
            "person1951_bacteria_4882.jpeg",
        ] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let header = jpeg_frame_header(&bytes, ImageFormat::Jpeg).unwrap();
            assert_eq!((header.components, header.marker), (1, 0xC0), "{name}");
            let ours =
                decode_jpeg(&bytes, &DecodeLimits::default(), ImageFormat::Jpeg, None).unwrap();
            let JpegSamples::U8(ours) = ours.samples else {
                panic!("{name}: not bytes");
            };
            let theirs = jpeg_decoder::Decoder::new(&bytes[..]).decode().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{name}");
            let most = ours
                .iter()
                .zip(&theirs)
                .map(|(&a, &b)| a.abs_diff(b))
                .max()
                .unwrap();
            assert!(most <= 1, "{name}: {most} levels apart");
        }
    }

    #[test]
    fn unpack_bits_literal_run_and_noop() {
        // 2 literals, run of 3 x 9, no-op, 1 literal.
        let input = [1, 5, 6, (-2i8) as u8, 9, 0x80, 0, 7];
        assert_eq!(unpack_bits(&input, 6), Some(vec![5, 6, 9, 9, 9, 7]));
        assert_eq!(unpack_bits(&input, 4), Some(vec![5, 6, 9, 9]));
        assert_eq!(unpack_bits(&input, 7), None);
    }

    #[test]
    fn jpeg_header_walk_skips_segments() {
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 1, 2];
        jpeg.extend_from_slice(&[0xFF, 0xC3, 0x00, 0x0B, 12, 0x00, 0x05, 0x00, 0x07, 1]);
        let h = jpeg_frame_header(&jpeg, ImageFormat::Jpeg).unwrap();
        assert_eq!((h.marker, h.precision, h.width, h.height), (0xC3, 12, 7, 5));
        assert_eq!(h.components, 1);
        assert!(jpeg_frame_header(&jpeg[..9], ImageFormat::Jpeg).is_err());
    }

    #[test]
    fn two_component_jpeg_is_refused_before_the_decoder() {
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0E, 8, 0, 1, 0, 1, 2, 1, 0x11, 0, 2, 0x11, 0, 0xFF,
            0xD9,
        ];
        let limits = DecodeLimits {
            min_side: 1,
            ..DecodeLimits::default()
        };
        let err = decode_jpeg(&jpeg, &limits, ImageFormat::Jpeg, None);
        assert!(
            matches!(err, Err(DecodeError::Unsupported { .. })),
            "{err:?}"
        );
    }
}
