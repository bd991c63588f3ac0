//! DICOM Part 10 structure: the file meta group, the transfer syntax, and a walk over the
//! data set (explicit or implicit VR little endian) that keeps the top-level attribute values
//! and the Pixel Data, skipping sequences of any nesting.
//!
//! Every length is checked against the bytes that are left, so truncated or lying files end
//! in [`DecodeError::Corrupt`], never in a panic or a large allocation.

use super::ImageFormat;
use crate::error::DecodeError;

/// A data element tag: (group, element).
pub(super) type Tag = (u16, u16);

/// Pixel Data (7FE0,0010).
pub(super) const PIXEL_DATA: Tag = (0x7FE0, 0x0010);
/// Float Pixel Data and Double Float Pixel Data, which are not read.
const FLOAT_PIXEL_DATA: [Tag; 2] = [(0x7FE0, 0x0008), (0x7FE0, 0x0009)];
/// Item, Item Delimitation Item, Sequence Delimitation Item.
const ITEM: Tag = (0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = (0xFFFE, 0xE0DD);
/// The length that marks an undefined-length element or item.
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Deepest sequence nesting accepted (real files use a handful of levels).
const MAX_DEPTH: usize = 32;

/// `(gggg,eeee)`, the usual way of writing a tag.
pub(super) fn tag_str(tag: Tag) -> String {
    format!("({:04X},{:04X})", tag.0, tag.1)
}

/// A [`DecodeError::Corrupt`] for DICOM.
pub(super) fn corrupt(detail: impl Into<String>) -> DecodeError {
    DecodeError::Corrupt {
        format: ImageFormat::Dicom,
        detail: detail.into(),
    }
}

/// The transfer syntaxes with a decoder here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TransferSyntax {
    /// 1.2.840.10008.1.2
    ImplicitLe,
    /// 1.2.840.10008.1.2.1
    ExplicitLe,
    /// 1.2.840.10008.1.2.1.98: native frames in encapsulated fragments.
    EncapsulatedUncompressed,
    /// 1.2.840.10008.1.2.1.99: the data set after the meta group is raw DEFLATE.
    DeflatedLe,
    /// 1.2.840.10008.1.2.5
    Rle,
    /// 1.2.840.10008.1.2.4.50, .51, .57, .70 (the JPEG decoder reads the process itself).
    Jpeg,
    /// 1.2.840.10008.1.2.4.90, .91
    Jpeg2000,
}

/// Supported transfer syntaxes: UID, standard name, syntax.
const SUPPORTED: &[(&str, &str, TransferSyntax)] = &[
    (
        "1.2.840.10008.1.2",
        "Implicit VR Little Endian",
        TransferSyntax::ImplicitLe,
    ),
    (
        "1.2.840.10008.1.2.1",
        "Explicit VR Little Endian",
        TransferSyntax::ExplicitLe,
    ),
    (
        "1.2.840.10008.1.2.1.98",
        "Encapsulated Uncompressed Explicit VR Little Endian",
        TransferSyntax::EncapsulatedUncompressed,
    ),
    (
        "1.2.840.10008.1.2.1.99",
        "Deflated Explicit VR Little Endian",
        TransferSyntax::DeflatedLe,
    ),
    ("1.2.840.10008.1.2.5", "RLE Lossless", TransferSyntax::Rle),
    (
        "1.2.840.10008.1.2.4.50",
        "JPEG Baseline (Process 1)",
        TransferSyntax::Jpeg,
    ),
    (
        "1.2.840.10008.1.2.4.51",
        "JPEG Extended (Process 2 & 4)",
        TransferSyntax::Jpeg,
    ),
    (
        "1.2.840.10008.1.2.4.57",
        "JPEG Lossless, Non-Hierarchical (Process 14)",
        TransferSyntax::Jpeg,
    ),
    (
        "1.2.840.10008.1.2.4.70",
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1)",
        TransferSyntax::Jpeg,
    ),
    (
        "1.2.840.10008.1.2.4.90",
        "JPEG 2000 Image Compression (Lossless Only)",
        TransferSyntax::Jpeg2000,
    ),
    (
        "1.2.840.10008.1.2.4.91",
        "JPEG 2000 Image Compression",
        TransferSyntax::Jpeg2000,
    ),
];

/// Known transfer syntaxes that are not read: UID, name, reason.
const UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "1.2.840.10008.1.2.2",
        "Explicit VR Big Endian (retired)",
        "big-endian encoding was retired from the standard in 2004 and is not read here",
    ),
    (
        "1.2.840.10008.1.2.4.80",
        "JPEG-LS Lossless Image Compression",
        "there is no pure-Rust JPEG-LS decoder (CharLS is a C++ library)",
    ),
    (
        "1.2.840.10008.1.2.4.81",
        "JPEG-LS Lossy (Near-Lossless) Image Compression",
        "there is no pure-Rust JPEG-LS decoder (CharLS is a C++ library)",
    ),
    (
        "1.2.840.10008.1.2.4.92",
        "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)",
        "JPEG 2000 Part 2 multi-component transforms are not implemented by the decoder",
    ),
    (
        "1.2.840.10008.1.2.4.93",
        "JPEG 2000 Part 2 Multi-component Image Compression",
        "JPEG 2000 Part 2 multi-component transforms are not implemented by the decoder",
    ),
    (
        "1.2.840.10008.1.2.4.94",
        "JPIP Referenced",
        "the pixel data is on a JPIP server, not in the file",
    ),
    (
        "1.2.840.10008.1.2.4.95",
        "JPIP Referenced Deflate",
        "the pixel data is on a JPIP server, not in the file",
    ),
    (
        "1.2.840.10008.1.2.4.110",
        "JPEG XL Lossless",
        "a pure-Rust JPEG XL decoder exists (jxl-oxide) but would multiply the build time of \
         this crate, and JPEG XL DICOM files are still rare",
    ),
    (
        "1.2.840.10008.1.2.4.111",
        "JPEG XL JPEG Recompression",
        "a pure-Rust JPEG XL decoder exists (jxl-oxide) but would multiply the build time of \
         this crate, and JPEG XL DICOM files are still rare",
    ),
    (
        "1.2.840.10008.1.2.4.112",
        "JPEG XL",
        "a pure-Rust JPEG XL decoder exists (jxl-oxide) but would multiply the build time of \
         this crate, and JPEG XL DICOM files are still rare",
    ),
    (
        "1.2.840.10008.1.2.4.201",
        "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
        "the pure-Rust JPEG 2000 decoder reads Part 1 block coding only, not High-Throughput \
         (Part 15)",
    ),
    (
        "1.2.840.10008.1.2.4.202",
        "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)",
        "the pure-Rust JPEG 2000 decoder reads Part 1 block coding only, not High-Throughput \
         (Part 15)",
    ),
    (
        "1.2.840.10008.1.2.4.203",
        "High-Throughput JPEG 2000 Image Compression",
        "the pure-Rust JPEG 2000 decoder reads Part 1 block coding only, not High-Throughput \
         (Part 15)",
    ),
];

impl TransferSyntax {
    /// The syntax of a UID, or an [`DecodeError::UnsupportedTransferSyntax`] naming it.
    pub(super) fn from_uid(uid: &str) -> Result<Self, DecodeError> {
        if let Some((_, _, ts)) = SUPPORTED.iter().find(|(u, _, _)| *u == uid) {
            return Ok(*ts);
        }
        let (name, reason) = match UNSUPPORTED.iter().find(|(u, _, _)| *u == uid) {
            Some((_, name, reason)) => (name.to_string(), reason.to_string()),
            None if uid.starts_with("1.2.840.10008.1.2.4.") => (
                "unknown or retired JPEG family syntax".to_string(),
                "retired JPEG processes, video (MPEG-2, MPEG-4, HEVC) and newer codecs are not \
                 read"
                    .to_string(),
            ),
            None => (
                "unknown transfer syntax".to_string(),
                "the UID is not a transfer syntax this decoder knows".to_string(),
            ),
        };
        Err(DecodeError::UnsupportedTransferSyntax {
            uid: uid.to_string(),
            name,
            reason,
        })
    }

    /// Whether the data set uses explicit VRs.
    pub(super) fn explicit_vr(self) -> bool {
        self != Self::ImplicitLe
    }
}

/// A bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes; a truncation error naming `what` when fewer are left.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "{what} at byte {} needs {n} bytes but only {} are left",
                    self.pos,
                    self.remaining()
                ))
            })?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn tag(&mut self) -> Result<Tag, DecodeError> {
        let group = self.u16("element tag")?;
        let element = self.u16("element tag")?;
        Ok((group, element))
    }
}

/// An element header: tag, VR (explicit syntaxes only) and length (`None` = undefined).
struct ElementHeader {
    tag: Tag,
    vr: Option<[u8; 2]>,
    len: Option<u32>,
    /// Byte offset of the header in the data being walked, for messages.
    offset: usize,
}

/// VRs whose explicit encoding has 2 reserved bytes and a 32-bit length.
const LONG_VRS: [&[u8; 2]; 13] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
];

/// Reads one element header. Items and delimiters (group FFFE) never carry a VR.
fn read_header(cur: &mut Cursor<'_>, explicit: bool) -> Result<ElementHeader, DecodeError> {
    let offset = cur.pos;
    let tag = cur.tag()?;
    let (vr, len) = if tag.0 == 0xFFFE || !explicit {
        (None, cur.u32("element length")?)
    } else {
        let vr_bytes = cur.take(2, "value representation")?;
        let vr = [vr_bytes[0], vr_bytes[1]];
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(corrupt(format!(
                "element {} at byte {offset} has VR bytes {:02X} {:02X}; expected two capital \
                 letters (explicit VR)",
                tag_str(tag),
                vr[0],
                vr[1]
            )));
        }
        let len = if LONG_VRS.contains(&&vr) {
            cur.take(2, "reserved bytes")?;
            cur.u32("element length")?
        } else {
            u32::from(cur.u16("element length")?)
        };
        (Some(vr), len)
    };
    Ok(ElementHeader {
        tag,
        vr,
        len: (len != UNDEFINED).then_some(len),
        offset,
    })
}

/// The transfer syntax UID and where the data set starts, from a Part 10 file (preamble,
/// `DICM`, file meta group in explicit VR little endian).
pub(super) fn read_file_meta(bytes: &[u8]) -> Result<(String, usize), DecodeError> {
    if bytes.get(128..132) != Some(b"DICM") {
        return Err(corrupt(
            "the 'DICM' prefix is missing at byte 128 (not a DICOM Part 10 file)",
        ));
    }
    let mut cur = Cursor::new(bytes, 132);
    let mut transfer_syntax = None;
    while cur.remaining() >= 2 && bytes.get(cur.pos..cur.pos + 2) == Some(&[0x02, 0x00]) {
        let header = read_header(&mut cur, true)?;
        let len = header.len.ok_or_else(|| {
            corrupt(format!(
                "file meta element {} has an undefined length",
                tag_str(header.tag)
            ))
        })?;
        let value = cur.take(len as usize, "file meta element value")?;
        if header.tag == (0x0002, 0x0010) {
            transfer_syntax = Some(text(value));
        }
    }
    let uid = transfer_syntax
        .filter(|uid| !uid.is_empty())
        .ok_or(DecodeError::BadAttribute {
            tag: tag_str((0x0002, 0x0010)),
            name: "TransferSyntaxUID",
            detail: "missing from the file meta group; expected the UID that says how the data \
                     set is encoded"
                .to_string(),
        })?;
    Ok((uid, cur.pos))
}

/// The Pixel Data element's value.
#[derive(Debug)]
pub(super) enum PixelData<'a> {
    /// Native (uncompressed) frames, back to back.
    Native(&'a [u8]),
    /// Encapsulated: the Basic Offset Table (possibly empty) and the fragments.
    Encapsulated {
        /// Byte offsets of each frame's first fragment item, from the first fragment item.
        offsets: Vec<u32>,
        /// The fragments' bytes, in order.
        fragments: Vec<&'a [u8]>,
    },
}

/// The top-level attributes of a data set (values as stored) and its Pixel Data.
#[derive(Debug)]
pub(super) struct DataSet<'a> {
    attributes: Vec<(Tag, &'a [u8])>,
    /// The Pixel Data (7FE0,0010).
    pub(super) pixel_data: PixelData<'a>,
}

/// Walks the data set that starts at byte `start` of `data` up to and including its Pixel
/// Data; what follows the pixel data is not read. `explicit` is the VR encoding of the
/// transfer syntax.
pub(super) fn parse_dataset(
    data: &[u8],
    start: usize,
    explicit: bool,
) -> Result<DataSet<'_>, DecodeError> {
    let mut cur = Cursor::new(data, start);
    let mut attributes = Vec::new();
    loop {
        if cur.remaining() == 0 {
            return Err(DecodeError::MissingPixelData);
        }
        let header = read_header(&mut cur, explicit)?;
        if header.tag.0 == 0xFFFE {
            return Err(corrupt(format!(
                "item or delimiter {} at byte {} outside any sequence",
                tag_str(header.tag),
                header.offset
            )));
        }
        if header.tag == PIXEL_DATA {
            let pixel_data = match header.len {
                Some(len) => PixelData::Native(cur.take(len as usize, "Pixel Data value")?),
                None => read_fragments(&mut cur)?,
            };
            return Ok(DataSet {
                attributes,
                pixel_data,
            });
        }
        if FLOAT_PIXEL_DATA.contains(&header.tag) {
            return Err(DecodeError::Unsupported {
                format: ImageFormat::Dicom,
                detail: format!(
                    "float pixel data {} (parametric maps); expected integer Pixel Data \
                     (7FE0,0010)",
                    tag_str(header.tag)
                ),
            });
        }
        match header.len {
            Some(len) => {
                let value = cur.take(len as usize, "element value")?;
                attributes.push((header.tag, value));
            }
            None => skip_sequence(&mut cur, nested_explicit(explicit, header.vr), 1)?,
        }
    }
}

/// The VR encoding inside an undefined-length element: implicit inside UN (PS3.5 6.2.2),
/// else as outside.
fn nested_explicit(explicit: bool, vr: Option<[u8; 2]>) -> bool {
    explicit && vr != Some(*b"UN")
}

/// Skips the items of an undefined-length sequence, up to its Sequence Delimitation Item.
fn skip_sequence(cur: &mut Cursor<'_>, explicit: bool, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(corrupt(format!(
            "sequences nested deeper than {MAX_DEPTH} levels at byte {}",
            cur.pos
        )));
    }
    loop {
        let offset = cur.pos;
        let tag = cur.tag()?;
        let len = cur.u32("item length")?;
        match tag {
            SEQUENCE_DELIMITER => return Ok(()),
            ITEM if len == UNDEFINED => skip_item(cur, explicit, depth)?,
            ITEM => {
                cur.take(len as usize, "sequence item")?;
            }
            _ => {
                return Err(corrupt(format!(
                    "expected an item (FFFE,E000) or a sequence delimiter (FFFE,E0DD) at byte \
                     {offset}, found {}",
                    tag_str(tag)
                )));
            }
        }
    }
}

/// Skips the elements of an undefined-length item, up to its Item Delimitation Item.
fn skip_item(cur: &mut Cursor<'_>, explicit: bool, depth: usize) -> Result<(), DecodeError> {
    loop {
        let header = read_header(cur, explicit)?;
        if header.tag == ITEM_DELIMITER {
            return Ok(());
        }
        if header.tag.0 == 0xFFFE {
            return Err(corrupt(format!(
                "unexpected {} at byte {} inside a sequence item",
                tag_str(header.tag),
                header.offset
            )));
        }
        match header.len {
            Some(len) => {
                cur.take(len as usize, "element value")?;
            }
            None => skip_sequence(cur, nested_explicit(explicit, header.vr), depth + 1)?,
        }
    }
}

/// Reads encapsulated pixel data: the Basic Offset Table item, then fragment items, then
/// the Sequence Delimitation Item (required: without it the file is truncated).
fn read_fragments<'a>(cur: &mut Cursor<'a>) -> Result<PixelData<'a>, DecodeError> {
    let mut offsets = Vec::new();
    let mut fragments = Vec::new();
    let mut first = true;
    loop {
        let offset = cur.pos;
        let tag = cur.tag()?;
        let len = cur.u32("fragment length")?;
        match tag {
            SEQUENCE_DELIMITER if !first => break,
            ITEM if len != UNDEFINED => {
                let value = cur.take(len as usize, "pixel data fragment")?;
                if first {
                    offsets = value
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                } else {
                    fragments.push(value);
                }
            }
            _ => {
                return Err(corrupt(format!(
                    "encapsulated Pixel Data: expected a defined-length item (FFFE,E000) or, \
                     after the offset table, a sequence delimiter at byte {offset}; found {} \
                     with length {len:#X}",
                    tag_str(tag)
                )));
            }
        }
        first = false;
    }
    Ok(PixelData::Encapsulated { offsets, fragments })
}

/// A text value as Latin-1, without the padding spaces and NULs around it.
pub(super) fn text(value: &[u8]) -> String {
    let s: String = value.iter().map(|&b| char::from(b)).collect();
    s.trim_matches(|c: char| c == ' ' || c == '\0').to_string()
}

impl<'a> DataSet<'a> {
    /// The raw value of a top-level attribute.
    pub(super) fn get(&self, tag: Tag) -> Option<&'a [u8]> {
        self.attributes
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| *v)
    }

    /// The first value of a (possibly multi-valued) text attribute, trimmed; `None` when
    /// absent or empty.
    pub(super) fn text(&self, tag: Tag) -> Option<String> {
        let value = self.get(tag)?;
        let whole = text(value);
        let first = whole.split('\\').next().unwrap_or("");
        let first = first.trim_matches(|c: char| c == ' ' || c == '\0');
        (!first.is_empty()).then(|| first.to_string())
    }

    /// An unsigned short (US) attribute; `None` when absent, an error when shorter than 2
    /// bytes.
    pub(super) fn us(&self, tag: Tag, name: &'static str) -> Result<Option<u16>, DecodeError> {
        match self.get(tag) {
            None => Ok(None),
            Some([a, b, ..]) => Ok(Some(u16::from_le_bytes([*a, *b]))),
            Some(value) => Err(DecodeError::BadAttribute {
                tag: tag_str(tag),
                name,
                detail: format!(
                    "value of {} bytes; expected a 2-byte unsigned short",
                    value.len()
                ),
            }),
        }
    }

    /// The first value of a decimal or integer string (DS, IS) attribute; `Ok(None)` when
    /// absent or empty, an error when present but not a finite number.
    pub(super) fn number(&self, tag: Tag, name: &'static str) -> Result<Option<f64>, DecodeError> {
        let Some(s) = self.text(tag) else {
            return Ok(None);
        };
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(DecodeError::BadAttribute {
                tag: tag_str(tag),
                name,
                detail: format!("'{s}' is not a finite number"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An explicit VR LE element with a short-form VR.
    fn short(tag: Tag, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn item_header(tag: Tag, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out
    }

    #[test]
    fn skips_nested_undefined_length_sequences() {
        let mut data = short((0x0008, 0x0060), b"CS", b"CR");
        // (0008,1140) SQ, undefined length, one undefined-length item holding another SQ.
        data.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0]);
        data.extend_from_slice(&UNDEFINED.to_le_bytes());
        data.extend(item_header(ITEM, UNDEFINED));
        data.extend(short((0x0008, 0x1150), b"UI", b"1.2"));
        data.extend_from_slice(&[0x08, 0x00, 0x41, 0x11, b'S', b'Q', 0, 0]);
        data.extend_from_slice(&UNDEFINED.to_le_bytes());
        data.extend(item_header(ITEM, 4));
        data.extend_from_slice(b"abcd");
        data.extend(item_header(SEQUENCE_DELIMITER, 0));
        data.extend(item_header(ITEM_DELIMITER, 0));
        data.extend(item_header(SEQUENCE_DELIMITER, 0));
        data.extend(short((0x0010, 0x0040), b"CS", b"F "));
        data.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
        data.extend_from_slice(&4u32.to_le_bytes());
        data.extend_from_slice(&[1, 0, 2, 0]);
        let ds = parse_dataset(&data, 0, true).unwrap();
        assert_eq!(ds.text((0x0008, 0x0060)).as_deref(), Some("CR"));
        assert_eq!(ds.text((0x0010, 0x0040)).as_deref(), Some("F"));
        assert!(matches!(ds.pixel_data, PixelData::Native(&[1, 0, 2, 0])));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut data = Vec::new();
        for _ in 0..100 {
            data.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0]);
            data.extend_from_slice(&UNDEFINED.to_le_bytes());
            data.extend(item_header(ITEM, UNDEFINED));
        }
        let err = parse_dataset(&data, 0, true).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }

    #[test]
    fn unknown_transfer_syntax_is_named() {
        let err = TransferSyntax::from_uid("1.2.840.10008.1.2.4.80").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("1.2.840.10008.1.2.4.80"), "{text}");
        assert!(text.contains("JPEG-LS Lossless"), "{text}");
        let err = TransferSyntax::from_uid("1.2.3").unwrap_err();
        assert!(err.to_string().contains("unknown transfer syntax"));
    }

    #[test]
    fn lengths_beyond_the_data_are_truncation_errors() {
        let mut data = short((0x0008, 0x0060), b"CS", b"CR");
        data.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
        data.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let err = parse_dataset(&data, 0, true).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
