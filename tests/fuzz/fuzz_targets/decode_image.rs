//! Image decoding (PNG, JPEG, DICOM) and the preprocessing every decoded image goes
//! through: the evaluation view, the MSN pretraining views and the packed batch.
#![no_main]

use cxr_msn::config::{Normalization, ViewConfig};
use cxr_msn::decode::{DecodeLimits, decode, decode_downscaled};
use cxr_msn::preprocess::BatchData;
use cxr_msn::views::{eval_view, msn_views, resize_shorter_side};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

fuzz_target!(|data: &[u8]| {
    // Small limits keep each run fast; the limit checks themselves are part of the target.
    let limits = DecodeLimits {
        min_side: 16,
        max_side: 2048,
        max_pixels: 1 << 20,
    };
    let Ok(decoded) = decode(data, &limits) else {
        return;
    };
    let image = decoded.image;
    assert!(image.width > 0 && image.height > 0);
    assert!(image.width <= limits.max_side && image.height <= limits.max_side);
    assert_eq!(image.pixels.len(), image.width * image.height);
    assert!(
        image.pixels.iter().all(|v| (0.0..=1.0).contains(v)),
        "intensities in [0, 1]"
    );
    // The loader's path: downscaled while decoding, equal to the full decode resized.
    let small = if image.width.min(image.height) > 40 {
        resize_shorter_side(&image, 40)
    } else {
        image.clone()
    };
    let loaded = decode_downscaled(data, &limits, 40).expect("decodes when decode does");
    assert_eq!(
        (loaded.image.width, loaded.image.height),
        (small.width, small.height)
    );
    let worst = loaded
        .image
        .pixels
        .iter()
        .zip(&small.pixels)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-5, "downscaled decode differs by {worst}");
    let view = eval_view(&small);
    let views = ViewConfig {
        large_size: 32,
        focal_size: 16,
        focal_views: 2,
        ..ViewConfig::default()
    };
    let mut rng = StdRng::seed_from_u64(data.len() as u64);
    let drawn = msn_views(&image, &views, &mut rng);
    let norm = Normalization::imagenet(1);
    let batch = BatchData::pack(&[&drawn.target, &drawn.anchor], &norm).expect("same-size views");
    assert!(batch.values.iter().all(|v| v.is_finite()));
    assert!(view.pixels.iter().all(|v| v.is_finite()));
});
