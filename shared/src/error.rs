//! Error types of the model crate. Each names what was wrong and what was expected.

use thiserror::Error;

/// A configuration that cannot be built.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfigError {
    /// Unknown ViT preset name.
    #[error("unknown ViT preset '{0}': expected one of tiny, tiny-3h, small, base")]
    UnknownPreset(String),
    /// Unknown profile name.
    #[error("unknown profile '{0}': expected 'paper' or 'msn'")]
    UnknownProfile(String),
    /// A value out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Bad EHR input: an unknown feature-set name or a record that lacks a required field.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum EhrError {
    /// The feature-set name is not one of the 23 and not a `+`-joined list of fields.
    #[error(
        "unknown EHR feature set '{name}': expected one of the 23 named sets \
         (e.g. sex, age, demographic, all-age5) or fields joined by '+' ({fields}); \
         unknown part: '{part}'"
    )]
    UnknownFeatureSet {
        /// The whole name given.
        name: String,
        /// The part that was not recognised.
        part: String,
        /// The field names that are accepted.
        fields: String,
    },
    /// A field appears twice in one feature set.
    #[error("EHR feature set '{0}' names a field twice")]
    DuplicateField(String),
    /// The record lacks a value that the feature set needs.
    #[error("EHR field '{field}' is required by feature set '{set}' but missing from the record")]
    MissingField {
        /// The field name.
        field: &'static str,
        /// The feature-set name.
        set: String,
    },
    /// A value that cannot be encoded (e.g. a negative or non-finite age).
    #[error("EHR field '{field}': {message}")]
    InvalidValue {
        /// The field name.
        field: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A textual value that is not one of the accepted spellings.
    #[error("EHR field '{field}': '{value}' is not one of {expected}")]
    UnknownValue {
        /// The field name.
        field: &'static str,
        /// The value given.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
}

/// Inputs of the wrong shape or inconsistent with the model.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ShapeError {
    /// A tensor dimension does not match.
    #[error("{what}: expected {expected}, got {got}")]
    Mismatch {
        /// Which input.
        what: String,
        /// The expected shape or size.
        expected: String,
        /// The shape or size given.
        got: String,
    },
}

/// A model file that cannot be read or does not fit the model it is loaded into.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Not a safetensors container at all, or a truncated one.
    #[error(
        "not a readable cxr-msn model file ({0}); the file may be truncated or of another kind"
    )]
    Container(String),
    /// A safetensors file without our metadata.
    #[error(
        "this safetensors file is not a cxr-msn model file: its metadata lacks '{0}' \
         (weights from other tools are brought in with `cxr-msn import`)"
    )]
    NotOurFormat(&'static str),
    /// Written by a newer (or unknown) version of the format.
    #[error(
        "model file format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: String,
        /// Version this build reads.
        supported: u32,
    },
    /// The metadata JSON is malformed.
    #[error("model file metadata is malformed: {0}")]
    Metadata(String),
    /// The model kind in the file is not the one asked for.
    #[error("model file holds a '{found}' model, expected '{expected}'")]
    WrongKind {
        /// Kind in the file.
        found: String,
        /// Kind asked for.
        expected: String,
    },
    /// The stored configuration is invalid. (Not an error `source`: the message already
    /// holds it, and chains printed with `{:#}` would say it twice.)
    #[error("in the model file: {0}")]
    Config(ConfigError),
    /// The weights do not fit the architecture in the metadata.
    #[error("model file weights do not match the architecture: {0}")]
    Weights(String),
    /// A weight is NaN or infinite.
    #[error(
        "model file tensor '{tensor}' holds {count} NaN or infinite value(s): the file is \
         damaged, or the training that wrote it diverged"
    )]
    NonFinite {
        /// The first such tensor, in name order.
        tensor: String,
        /// How many of its values are not finite.
        count: usize,
    },
    /// Writing failed (a tensor could not be read back from the device).
    #[error("could not serialise the model: {0}")]
    Write(String),
}

impl From<ConfigError> for CheckpointError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

/// Image bytes that cannot be turned into a [`crate::image::GreyImage`]
/// (see [`crate::decode::decode`]).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("the image file is empty (0 bytes); expected a PNG, JPEG or DICOM file")]
    Empty,
    /// The bytes are none of the formats read here.
    #[error(
        "unrecognised image format: expected PNG (starts 89 50 4E 47), JPEG (starts FF D8 FF) \
         or DICOM ('DICM' at byte 128, after the 128-byte preamble); {0}"
    )]
    UnknownFormat(String),
    /// The data ends early or breaks the format's rules.
    #[error("{format} data is truncated or corrupt: {detail}")]
    Corrupt {
        /// The format that was being read.
        format: crate::decode::ImageFormat,
        /// What was wrong, and where.
        detail: String,
    },
    /// A valid file that uses a feature this decoder does not implement.
    #[error("{format} image not supported: {detail}")]
    Unsupported {
        /// The format that was being read.
        format: crate::decode::ImageFormat,
        /// What is not supported, and what is.
        detail: String,
    },
    /// A DICOM transfer syntax without a decoder here.
    #[error(
        "DICOM transfer syntax {uid} ({name}) is not supported: {reason}. Supported: implicit and \
         explicit VR little endian, deflated explicit VR little endian, RLE lossless, JPEG \
         baseline and extended (8-bit), JPEG lossless (processes 14 and 14 SV1), JPEG 2000 \
         (lossless and lossy)"
    )]
    UnsupportedTransferSyntax {
        /// The transfer syntax UID from the file meta group.
        uid: String,
        /// Its name in the standard, or "unknown transfer syntax".
        name: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// The declared size exceeds [`crate::decode::DecodeLimits`]; checked before any pixel
    /// buffer is allocated.
    #[error(
        "{format} image of {width}x{height} pixels ({pixels} pixels) exceeds the decode limit \
         of {max_side} pixels per side and {max_pixels} pixels in all"
    )]
    TooLarge {
        /// The format that was being read.
        format: crate::decode::ImageFormat,
        /// Declared width in pixels.
        width: u64,
        /// Declared height in pixels.
        height: u64,
        /// `width * height`.
        pixels: u64,
        /// The limit on either side.
        max_side: usize,
        /// The limit on the pixel count.
        max_pixels: usize,
    },
    /// A width or height of zero.
    #[error("{format} image declares a size of {width}x{height}; expected at least 1x1 pixels")]
    ZeroSize {
        /// The format that was being read.
        format: crate::decode::ImageFormat,
        /// Declared width in pixels.
        width: u64,
        /// Declared height in pixels.
        height: u64,
    },
    /// A width or height below [`DecodeLimits::min_side`](crate::decode::DecodeLimits).
    #[error(
        "{format} image is {width}x{height} pixels, too small to be a radiograph: expected at \
         least {min_side} pixels a side"
    )]
    TooSmall {
        /// The format that was being read.
        format: crate::decode::ImageFormat,
        /// Width in pixels.
        width: u64,
        /// Height in pixels.
        height: u64,
        /// The smallest side accepted.
        min_side: usize,
    },
    /// A DICOM file without the Pixel Data element (e.g. a structured report).
    #[error(
        "DICOM file has no pixel data: element (7FE0,0010) Pixel Data is missing, so this is \
         not an image (a report or presentation state?)"
    )]
    MissingPixelData,
    /// A DICOM image attribute that is required but missing or malformed.
    #[error("DICOM attribute {name} {tag}: {detail}")]
    BadAttribute {
        /// The tag, as `(gggg,eeee)`.
        tag: String,
        /// Its keyword, e.g. `Rows`.
        name: &'static str,
        /// What is wrong and what was expected.
        detail: String,
    },
}
