//! `cxr-msn views`: the views pretraining would draw from one image, on one sheet.

use std::path::Path;

use anyhow::Result;
use cxr_msn::config::ViewConfig;
use cxr_msn::decode::DecodeLimits;
use cxr_msn::image::GreyImage;
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;
use cxr_msn::views::{eval_view, into_loaded, msn_views};

use crate::files::write_atomic;
use crate::images::decode_file;
use crate::synthetic::encode_png;

/// Pastes `img` into `sheet` with its top-left corner at (x, y).
fn paste(sheet: &mut GreyImage, img: &GreyImage, x: usize, y: usize) {
    for row in 0..img.height.min(sheet.height.saturating_sub(y)) {
        let src = &img.pixels[row * img.width..(row + 1) * img.width];
        let start = (y + row) * sheet.width + x;
        let n = img.width.min(sheet.width - x);
        sheet.pixels[start..start + n].copy_from_slice(&src[..n]);
    }
}

/// The sheet: first row the evaluation view, the target and the random anchor; second
/// row the focal views. Views are in [0, 1] intensities (before normalisation).
pub fn sheet(img: &GreyImage, views: &ViewConfig, seed: u64) -> GreyImage {
    let v = msn_views(img, views, &mut StdRng::seed_from_u64(seed));
    let gap = 8;
    let (large, focal) = (views.large_size, views.focal_size);
    let width = (3 * (large + gap)).max(v.focal.len() * (focal + gap)) + gap;
    let height = large + focal + 3 * gap;
    let mut out = GreyImage {
        width,
        height,
        pixels: vec![0.0; width * height],
    };
    let eval = eval_view(img);
    for (i, view) in [&eval, &v.target, &v.anchor].into_iter().enumerate() {
        paste(&mut out, view, gap + i * (large + gap), gap);
    }
    for (i, view) in v.focal.iter().enumerate() {
        paste(&mut out, view, gap + i * (focal + gap), large + 2 * gap);
    }
    out
}

/// Decodes `image`, draws its views with `seed` and writes the sheet as a PNG to `out`.
pub fn write_sheet(image: &Path, out: &Path, views: &ViewConfig, seed: u64) -> Result<()> {
    let img = decode_file(image, &DecodeLimits::default())?;
    write_atomic(out, &encode_png(&sheet(&into_loaded(img), views, seed))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sheet_holds_every_view_and_depends_on_the_seed() {
        let img = GreyImage::new(
            300,
            260,
            (0..300 * 260).map(|i| (i % 300) as f32 / 300.0).collect(),
        )
        .unwrap();
        let views = ViewConfig::default();
        let a = sheet(&img, &views, 1);
        assert_eq!(a.width, 10 * (96 + 8) + 8);
        assert_eq!(a.height, 224 + 96 + 24);
        assert_eq!(a, sheet(&img, &views, 1));
        assert_ne!(a, sheet(&img, &views, 2));
        // The last focal view is there (not black).
        let x = 8 + 9 * 104 + 48;
        assert!(a.get(x, 224 + 16 + 48) > 0.0);
    }
}
