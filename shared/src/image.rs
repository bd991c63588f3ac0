//! The decoded grey image every later stage works on, as floats ([`GreyImage`]) or as 16-bit
//! levels ([`Grey16`], how the trainer's loader keeps a loaded picture and its cache stores
//! it).

/// A single-channel image, row-major, intensities in [0, 1] with 0 = black as displayed
/// (MONOCHROME2 convention: air is dark, bone is bright), each pixel an [`Intensity`]:
/// [`GreyImage`] holds floats, [`Grey16`] 16-bit levels.
#[derive(Debug, Clone, PartialEq)]
pub struct Image<T> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width` pixels, row by row.
    pub pixels: Vec<T>,
}

/// The grey image as floats: what decoding gives and every view is.
pub type GreyImage = Image<f32>;

/// The grey image as 16-bit levels, intensity `v / 65535`: half the bytes of a
/// [`GreyImage`] for the views to read. The trainer's loader keeps each loaded picture so,
/// and its cache stores exactly these values, so a picture from the cache and one decoded
/// again are the same.
pub type Grey16 = Image<u16>;

impl<T: Copy> Image<T> {
    /// An image from its pixels; `None` when the count does not match the size.
    pub fn new(width: usize, height: usize, pixels: Vec<T>) -> Option<Self> {
        (width.checked_mul(height) == Some(pixels.len())).then_some(Self {
            width,
            height,
            pixels,
        })
    }

    /// The pixel at column `x`, row `y`.
    pub fn get(&self, x: usize, y: usize) -> T {
        self.pixels[y * self.width + x]
    }
}

impl<T: Intensity> Image<T> {
    /// The image in this pixel type, from floats ([`Intensity::from_unit`] per pixel; a
    /// [`GreyImage`] is returned as it is).
    pub fn from_grey(img: GreyImage) -> Self {
        T::from_grey(img)
    }

    /// The image as floats in [0, 1].
    pub fn to_grey(&self) -> GreyImage {
        GreyImage {
            width: self.width,
            height: self.height,
            pixels: self.pixels.iter().map(|&p| p.to_unit()).collect(),
        }
    }
}

/// A pixel type of [`Image`]: an intensity in [0, 1] stored as `raw * UNIT`.
pub trait Intensity: Copy + Default + Send + Sync + 'static {
    /// The stored value of intensity 1 (`1.0` for floats, `65535.0` for 16-bit levels).
    const UNIT: f32;

    /// The stored value as a float, not scaled: the intensity times [`Self::UNIT`].
    fn raw(self) -> f32;

    /// The value stored for `scaled`, an intensity already multiplied by [`Self::UNIT`]:
    /// floats keep it; 16-bit levels round it to the nearest level, clamped to 0..=65535
    /// (NaN to 0).
    fn from_scaled(scaled: f32) -> Self;

    /// The intensity, in [0, 1] for values made from that range.
    fn to_unit(self) -> f32 {
        self.raw() * (1.0 / Self::UNIT)
    }

    /// The value stored for intensity `v`.
    fn from_unit(v: f32) -> Self {
        Self::from_scaled(v * Self::UNIT)
    }

    /// A float image in this pixel type.
    fn from_grey(img: GreyImage) -> Image<Self> {
        Image {
            width: img.width,
            height: img.height,
            pixels: img.pixels.into_iter().map(Self::from_unit).collect(),
        }
    }
}

impl Intensity for f32 {
    const UNIT: f32 = 1.0;

    #[inline(always)]
    fn raw(self) -> f32 {
        self
    }

    #[inline(always)]
    fn from_scaled(scaled: f32) -> Self {
        scaled
    }

    /// The image itself, without a copy.
    fn from_grey(img: GreyImage) -> GreyImage {
        img
    }
}

impl Intensity for u16 {
    const UNIT: f32 = 65535.0;

    #[inline(always)]
    fn raw(self) -> f32 {
        f32::from(self)
    }

    /// The nearest level (halves to even), 0 below the range and for NaN, 65535 above.
    /// Clamped, then rounded by adding 2^23, where a float's spacing is 1, so the level is
    /// the sum's low mantissa bits: operations that vectorise, where a saturating cast
    /// (`as u16`) compiles to a scalar loop.
    #[inline(always)]
    // Not `clamp`: it passes NaN through, whose payload bits would become the level.
    #[allow(clippy::manual_clamp)]
    fn from_scaled(scaled: f32) -> Self {
        const ROUNDER: f32 = 8_388_608.0; // 2^23; its bits end in 16 zeros
        (scaled.max(0.0).min(65535.0) + ROUNDER).to_bits() as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_levels_round_to_nearest_and_clamp() {
        assert_eq!(u16::from_unit(0.0), 0);
        assert_eq!(u16::from_unit(1.0), 65535);
        assert_eq!(u16::from_unit(0.5), 32768); // 32767.5: halves to even
        assert_eq!(u16::from_scaled(2.5), 2);
        assert_eq!(u16::from_scaled(3.5), 4);
        assert_eq!(u16::from_scaled(65534.7), 65535);
        assert_eq!(u16::from_unit(1.0 / 65535.0), 1);
        assert_eq!(u16::from_unit(0.4 / 65535.0), 0);
        assert_eq!(u16::from_unit(0.6 / 65535.0), 1);
        assert_eq!(u16::from_unit(-0.25), 0);
        assert_eq!(u16::from_unit(3.0), 65535);
        assert_eq!(u16::from_unit(f32::NAN), 0);
        for v in [0u16, 1, 255, 257, 32767, 65534, 65535] {
            assert_eq!(u16::from_unit(v.to_unit()), v, "{v} survives a round trip");
        }
    }

    #[test]
    fn a_float_image_converts_to_levels_and_back_within_half_a_level() {
        let pixels: Vec<f32> = (0..97).map(|i| i as f32 / 96.0).collect();
        let grey = GreyImage::new(97, 1, pixels.clone()).unwrap();
        let levels = Grey16::from_grey(grey.clone());
        assert_eq!(levels.pixels[96], 65535);
        let back = levels.to_grey();
        for (a, b) in pixels.iter().zip(&back.pixels) {
            assert!((a - b).abs() <= 0.5 / 65535.0 + 1e-7, "{a} vs {b}");
        }
        // Floats convert to floats unchanged.
        assert_eq!(GreyImage::from_grey(grey.clone()), grey);
    }
}
