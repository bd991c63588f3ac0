//! The decoded grey image every later stage works on.

/// A single-channel image, row-major, intensities in [0, 1] with 0 = black as displayed
/// (MONOCHROME2 convention: air is dark, bone is bright).
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width` intensities, row by row.
    pub pixels: Vec<f32>,
}

impl GreyImage {
    /// An image from its pixels; `None` when the count does not match the size.
    pub fn new(width: usize, height: usize, pixels: Vec<f32>) -> Option<Self> {
        (width.checked_mul(height) == Some(pixels.len())).then_some(Self {
            width,
            height,
            pixels,
        })
    }

    /// The intensity at column `x`, row `y`.
    pub fn get(&self, x: usize, y: usize) -> f32 {
        self.pixels[y * self.width + x]
    }
}
