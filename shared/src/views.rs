//! The views drawn from one image (METHOD.md sections 4 and 7), seeded and reproducible:
//!
//! - pretraining: a target and a random anchor at 224 px (RandomResizedCrop, area scale
//!   0.3-1.0, aspect ratio 3/4-4/3, horizontal flip p = 0.5) and focal anchors at 96 px
//!   (area scale 0.05-0.3), as many as configured;
//! - evaluation: shorter side resized to 256, centre crop 224;
//! - fine-tuning: the evaluation resize, a horizontal flip, a random affine (rotation up to
//!   45 degrees, translation up to 0.15 of the side, scale 0.85-1.15), then the centre crop.
//!
//! Crops follow torchvision's `RandomResizedCrop.get_params` (ten tries, then a centre
//! crop of the nearest allowed aspect ratio); resizing is bilinear with antialiasing when
//! shrinking (PIL's BILINEAR filter), so small focal crops of large radiographs keep their
//! detail honestly. Every random choice comes from the caller's generator.

use std::marker::PhantomData;

use rand::{Rng, RngExt};

use crate::config::ViewConfig;
use crate::image::{GreyImage, Image, Intensity};
use crate::simd;

/// A crop rectangle in source pixels: top-left corner and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

/// The views of one image for a pretraining step.
#[derive(Debug, Clone)]
pub struct MsnViews {
    /// Unmasked target view, `large_size` square.
    pub target: GreyImage,
    /// The random anchor, `large_size` square.
    pub anchor: GreyImage,
    /// Focal anchors, `focal_size` square each.
    pub focal: Vec<GreyImage>,
}

/// torchvision's `RandomResizedCrop.get_params`: a box whose area is a `scale` fraction of
/// the image and whose aspect ratio (w / h) is log-uniform in `ratio`; ten tries, then the
/// whole image cropped to the nearest allowed ratio, centred.
pub fn random_resized_crop_box(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> CropBox {
    let (w_img, h_img) = (width as f64, height as f64);
    let area = w_img * h_img;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let w = (target_area * aspect).sqrt().round();
        let h = (target_area / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= w_img && h <= h_img {
            let y = rng.random_range(0..=(h_img - h) as usize) as f64;
            let x = rng.random_range(0..=(w_img - w) as usize) as f64;
            return CropBox {
                x,
                y,
                width: w,
                height: h,
            };
        }
    }
    let in_ratio = w_img / h_img;
    let (w, h) = if in_ratio < ratio.0 {
        (w_img, (w_img / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((h_img * ratio.1).round(), h_img)
    } else {
        (w_img, h_img)
    };
    CropBox {
        x: ((w_img - w) / 2.0).floor(),
        y: ((h_img - h) / 2.0).floor(),
        width: w,
        height: h,
    }
}

/// Antialiased bilinear taps (PIL's BILINEAR filter) for resampling the source span
/// `[start, start + len)` of a line of `src_len` pixels onto `out_len` pixels: output pixel
/// `i` is the weighted sum of source pixels `first[i] .. first[i] + taps` with the weights
/// [`Taps::of`]`(i)`, normalised per output pixel and padded with zeros up to the widest
/// pixel's count.
struct Taps {
    first: Vec<usize>,
    taps: usize,
    weights: Vec<f32>,
}

impl Taps {
    fn new(src_len: usize, start: f64, len: f64, out_len: usize) -> Self {
        let scale = len / out_len as f64;
        let support = scale.max(1.0); // triangle filter of radius 1, stretched when shrinking
        let spans: Vec<(f64, usize, usize)> = (0..out_len)
            .map(|i| {
                let center = start + (i as f64 + 0.5) * scale;
                let lo = ((center - support).floor().max(0.0)) as usize;
                let hi = ((center + support).ceil() as usize).min(src_len);
                let lo = lo.min(hi.saturating_sub(1));
                (center, lo, hi.max(lo + 1))
            })
            .collect();
        let taps = spans.iter().map(|&(_, lo, hi)| hi - lo).max().unwrap_or(1);
        let mut weights = vec![0.0f32; taps * out_len];
        for (i, &(center, lo, hi)) in spans.iter().enumerate() {
            let own = &mut weights[i * taps..i * taps + hi - lo];
            for (w, j) in own.iter_mut().zip(lo..hi) {
                let t = ((j as f64 + 0.5 - center) / support).abs();
                *w = (1.0 - t).max(0.0) as f32;
            }
            let sum: f32 = own.iter().sum();
            if sum > 0.0 {
                own.iter_mut().for_each(|w| *w /= sum);
            } else {
                // The span fell between samples: nearest pixel.
                own.fill(0.0);
                own[0] = 1.0;
            }
        }
        Taps {
            first: spans.iter().map(|&(_, lo, _)| lo).collect(),
            taps,
            weights,
        }
    }

    /// Output pixel `i`'s weights, `taps` of them.
    fn of(&self, i: usize) -> &[f32] {
        &self.weights[i * self.taps..(i + 1) * self.taps]
    }
}

/// Resamples the `crop` of `img` (floats or 16-bit levels) to `out_w` x `out_h` pixels
/// (bilinear, antialiased when shrinking), optionally mirrored left-right.
pub fn resize_crop<T: Intensity>(
    img: &Image<T>,
    crop: CropBox,
    out_w: usize,
    out_h: usize,
    flip: bool,
) -> GreyImage {
    let pixels = Resample {
        source: (&img.pixels, img.width, img.height),
        value: T::raw,
        gain: 1.0 / T::UNIT,
        crop,
        out: (out_w, out_h),
        flip,
        transpose: Transpose::new(),
        output: PhantomData,
    }
    .run();
    GreyImage {
        width: out_w,
        height: out_h,
        pixels,
    }
}

/// 8-bit grey samples (`width * height`, row-major; intensity `v / 255`) resized so that the
/// shorter side is `shorter` pixels, as [`resize_shorter_side`] resizes the image they make;
/// equal to it up to float rounding (and, for 16-bit levels, the rounding to a level),
/// without a full-size float copy of the samples.
pub fn downscale_grey8<O: Intensity>(
    samples: &[u8],
    width: usize,
    height: usize,
    shorter: usize,
) -> Image<O> {
    let (out_w, out_h) = shorter_side_size(width, height, shorter);
    let whole = CropBox {
        x: 0.0,
        y: 0.0,
        width: width as f64,
        height: height as f64,
    };
    let pixels = Resample {
        source: (samples, width, height),
        value: f32::from,
        gain: O::UNIT / 255.0,
        crop: whole,
        out: (out_w, out_h),
        flip: false,
        transpose: Transpose::new(),
        output: PhantomData,
    }
    .run();
    Image {
        width: out_w,
        height: out_h,
        pixels,
    }
}

/// Output rows the horizontal pass of [`Resample`] computes together, one per SIMD lane.
const ROW_BLOCK: usize = 8;

/// The separable resampling behind [`resize_crop`] and [`downscale_grey8`]: the `crop` of
/// the source resampled to `out` pixels of type `O`, mirrored left-right when `flip` is set
/// ([`Self::run`]).
///
/// The vertical pass comes first, one output row at a time, over the source columns the
/// horizontal pass reads: a weighted sum of whole row spans, which the compiler vectorises,
/// so the horizontal pass then runs over `out_h` rows only, not over every source row of
/// the crop (4-8 times more when shrinking a radiograph). The horizontal pass takes
/// [`ROW_BLOCK`] output rows at once from a column-interleaved copy of their vertical sums,
/// so that each tap is one vector operation across the rows. The rows are interleaved, and
/// the results turned back into rows, by [`Transpose`] in 8 x 8 tiles; the output is built
/// a block of rows at a time and never zero-filled. Every output pixel still sums its taps
/// in order from the first, so the result does not depend on the blocking.
///
/// Both passes run at the CPU's widest vector width ([`simd::widest`]); each output pixel's
/// arithmetic is the same at every width (no fused multiply-adds), so the result is too.
#[derive(Clone)]
struct Resample<'a, T, V, O> {
    /// `(samples, width, height)`, row-major.
    source: (&'a [T], usize, usize),
    /// Reads a sample as a float.
    value: V,
    /// What every output pixel is multiplied by.
    gain: f32,
    crop: CropBox,
    /// `(width, height)` of the output.
    out: (usize, usize),
    flip: bool,
    transpose: Transpose,
    /// Each output pixel is [`Intensity::from_scaled`] of its weighted sum times `gain`.
    output: PhantomData<O>,
}

impl<T: Copy, V: Fn(T) -> f32, O: Intensity> Resample<'_, T, V, O> {
    /// The output pixels, row-major.
    fn run(self) -> Vec<O> {
        simd::widest(self)
    }
}

impl<T: Copy, V: Fn(T) -> f32, O: Intensity> pulp::NullaryFnOnce for Resample<'_, T, V, O> {
    type Output = Vec<O>;

    /// The body, inlined into each of [`simd::widest`]'s copies.
    #[inline(always)]
    fn call(self) -> Vec<O> {
        let Self {
            source: (pixels, width, height),
            value,
            gain,
            crop,
            out: (out_w, out_h),
            flip,
            transpose,
            output: _,
        } = self;
        let cols = Taps::new(width, crop.x, crop.width, out_w);
        let rows = Taps::new(height, crop.y, crop.height, out_h);
        let taps = cols.taps;
        let col_lo = cols.first.first().copied().unwrap_or(0);
        let col_end = cols.first.last().map_or(0, |lo| lo + taps);
        let span = col_end.min(width).saturating_sub(col_lo);
        // `block[r * span + c]`: row r's vertical sum at column `col_lo + c`.
        let mut block = vec![0.0f32; ROW_BLOCK * span];
        // `interleaved[c * ROW_BLOCK + r]`: the same sums, the block's rows side by side.
        // Padded taps past the image's right edge read its zero tail (with zero weight).
        let mut interleaved = vec![0.0f32; ROW_BLOCK * col_end.saturating_sub(col_lo)];
        // The block's output rows, copied to `out` when done: `out` is never zero-filled.
        let mut block_out = vec![0.0f32; ROW_BLOCK * out_w];
        let mut out = Vec::with_capacity(out_w * out_h);
        for first_row in (0..out_h).step_by(ROW_BLOCK) {
            let n = ROW_BLOCK.min(out_h - first_row);
            for (r, sums) in block.chunks_exact_mut(span.max(1)).take(n).enumerate() {
                let y = first_row + r;
                let lo = rows.first[y];
                // Padded taps past the bottom edge have zero weight: skip them. The first
                // tap sets the sums, the others add to them.
                for (k, &w) in rows.of(y).iter().enumerate().take(height - lo) {
                    let start = (lo + k) * width + col_lo;
                    let line = &pixels[start..start + span];
                    if k == 0 {
                        for (d, s) in sums.iter_mut().zip(line) {
                            *d = w * value(*s);
                        }
                    } else {
                        for (d, s) in sums.iter_mut().zip(line) {
                            *d += w * value(*s);
                        }
                    }
                }
            }
            // Rows n.. of a last, partial block hold stale sums; their outputs are not kept.
            let whole = span / TILE * TILE;
            for c0 in (0..whole).step_by(TILE) {
                let mut tile = [[0.0f32; TILE]; ROW_BLOCK];
                for (r, row) in tile.iter_mut().enumerate() {
                    row.copy_from_slice(&block[r * span + c0..][..TILE]);
                }
                let tile = transpose.tile(tile);
                let dst = &mut interleaved[c0 * ROW_BLOCK..(c0 + TILE) * ROW_BLOCK];
                for (d, column) in dst.chunks_exact_mut(ROW_BLOCK).zip(&tile) {
                    d.copy_from_slice(column);
                }
            }
            for c in whole..span {
                for r in 0..ROW_BLOCK {
                    interleaved[c * ROW_BLOCK + r] = block[r * span + c];
                }
            }
            // The horizontal pass, TILE output columns at a time, turned back into rows.
            let whole = out_w / TILE * TILE;
            for x0 in (0..whole).step_by(TILE) {
                let mut tile = [[0.0f32; ROW_BLOCK]; TILE];
                for (j, sums) in tile.iter_mut().enumerate() {
                    *sums = horizontal_sums(&interleaved, &cols, col_lo, x0 + j);
                }
                let tile = transpose.tile(tile);
                for (r, values) in tile.iter().enumerate() {
                    let dst = &mut block_out[r * out_w + x0..][..TILE];
                    for (d, v) in dst.iter_mut().zip(values) {
                        *d = v * gain;
                    }
                }
            }
            for x in whole..out_w {
                let sums = horizontal_sums(&interleaved, &cols, col_lo, x);
                for (r, s) in sums.iter().enumerate() {
                    block_out[r * out_w + x] = s * gain;
                }
            }
            let done = &mut block_out[..n * out_w];
            if flip && out_w > 0 {
                done.chunks_exact_mut(out_w).for_each(<[f32]>::reverse);
            }
            // Converted here, in one run over the rows (identity for floats): per tile, the
            // conversion to 16-bit levels compiled to scalar code.
            out.extend(done.iter().map(|&v| O::from_scaled(v)));
        }
        out
    }
}

/// The [`ROW_BLOCK`] rows' sums for output column `x` of the horizontal pass of
/// [`Resample`]: `cols`' taps for `x` over the vertical sums laid side by side in
/// `interleaved` (from column `col_lo`), one vector operation per tap, in tap order.
#[inline(always)]
fn horizontal_sums(interleaved: &[f32], cols: &Taps, col_lo: usize, x: usize) -> [f32; ROW_BLOCK] {
    let mut sums = [0.0f32; ROW_BLOCK];
    let base = (cols.first[x] - col_lo) * ROW_BLOCK;
    let columns = interleaved[base..base + cols.taps * ROW_BLOCK].chunks_exact(ROW_BLOCK);
    for (column, w) in columns.zip(cols.of(x)) {
        for (s, p) in sums.iter_mut().zip(column) {
            *s += w * p;
        }
    }
    sums
}

/// Side of the square tiles [`Transpose`] turns; [`ROW_BLOCK`] is one side.
const TILE: usize = 8;

/// Transposes 8 x 8 tiles of floats: with 24 AVX register shuffles per tile (pulp's safe
/// intrinsics) where the CPU has AVX2 (x86-64), element by element elsewhere. [`Resample`]
/// turns rows into columns and back with it; a loop over elements compiled to scattered
/// stores, or to one load and one store per element, which took a quarter of the
/// downscale's time each (BENCHMARKS.md).
#[derive(Clone, Copy)]
struct Transpose {
    #[cfg(target_arch = "x86_64")]
    avx: Option<pulp::x86::V3>,
}

impl Transpose {
    fn new() -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            avx: pulp::x86::V3::try_new(),
        }
    }

    /// Element by element on every CPU: what tests compare the shuffles with.
    #[cfg(test)]
    fn scalar() -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            avx: None,
        }
    }

    /// `out[j][i] = tile[i][j]`.
    #[inline(always)]
    fn tile(self, tile: [[f32; TILE]; TILE]) -> [[f32; TILE]; TILE] {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = self.avx {
            return transpose_avx(simd.avx, tile);
        }
        transpose_scalar(tile)
    }
}

#[inline(always)]
fn transpose_scalar(tile: [[f32; TILE]; TILE]) -> [[f32; TILE]; TILE] {
    let mut out = [[0.0f32; TILE]; TILE];
    for (i, row) in tile.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            out[j][i] = *v;
        }
    }
    out
}

/// The usual three rounds of shuffles: pairs of rows interleaved, then pairs of pairs, then
/// the 128-bit halves swapped.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose_avx(avx: pulp::core_arch::x86::Avx, tile: [[f32; TILE]; TILE]) -> [[f32; TILE]; TILE] {
    use pulp::bytemuck::cast;
    use std::arch::x86_64::__m256;
    let r: [__m256; TILE] = tile.map(cast);
    let t = [
        avx._mm256_unpacklo_ps(r[0], r[1]),
        avx._mm256_unpackhi_ps(r[0], r[1]),
        avx._mm256_unpacklo_ps(r[2], r[3]),
        avx._mm256_unpackhi_ps(r[2], r[3]),
        avx._mm256_unpacklo_ps(r[4], r[5]),
        avx._mm256_unpackhi_ps(r[4], r[5]),
        avx._mm256_unpacklo_ps(r[6], r[7]),
        avx._mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u = [
        avx._mm256_shuffle_ps::<0x44>(t[0], t[2]),
        avx._mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        avx._mm256_shuffle_ps::<0x44>(t[1], t[3]),
        avx._mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        avx._mm256_shuffle_ps::<0x44>(t[4], t[6]),
        avx._mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        avx._mm256_shuffle_ps::<0x44>(t[5], t[7]),
        avx._mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    let v = [
        avx._mm256_permute2f128_ps::<0x20>(u[0], u[4]),
        avx._mm256_permute2f128_ps::<0x20>(u[1], u[5]),
        avx._mm256_permute2f128_ps::<0x20>(u[2], u[6]),
        avx._mm256_permute2f128_ps::<0x20>(u[3], u[7]),
        avx._mm256_permute2f128_ps::<0x31>(u[0], u[4]),
        avx._mm256_permute2f128_ps::<0x31>(u[1], u[5]),
        avx._mm256_permute2f128_ps::<0x31>(u[2], u[6]),
        avx._mm256_permute2f128_ps::<0x31>(u[3], u[7]),
    ];
    v.map(cast)
}

/// One RandomResizedCrop view: crop box, flip with probability `flip_p`, resize to `size`.
pub fn random_view<T: Intensity>(
    img: &Image<T>,
    size: usize,
    scale: (f64, f64),
    views: &ViewConfig,
    rng: &mut impl Rng,
) -> GreyImage {
    let crop = random_resized_crop_box(img.width, img.height, scale, views.ratio, rng);
    let flip = rng.random_bool(views.flip_probability);
    resize_crop(img, crop, size, size, flip)
}

/// All pretraining views of one image: target, random anchor, then the focal anchors.
pub fn msn_views<T: Intensity>(img: &Image<T>, views: &ViewConfig, rng: &mut impl Rng) -> MsnViews {
    let large = |rng: &mut _| random_view(img, views.large_size, views.large_scale, views, rng);
    let target = large(rng);
    let anchor = large(rng);
    let focal = (0..views.focal_views)
        .map(|_| random_view(img, views.focal_size, views.focal_scale, views, rng))
        .collect();
    MsnViews {
        target,
        anchor,
        focal,
    }
}

/// Resizes so that the shorter side is `shorter` pixels, keeping the aspect ratio
/// (torchvision `Resize(int)`: the longer side is truncated, not rounded).
pub fn resize_shorter_side<T: Intensity>(img: &Image<T>, shorter: usize) -> GreyImage {
    let (out_w, out_h) = shorter_side_size(img.width, img.height, shorter);
    let whole = CropBox {
        x: 0.0,
        y: 0.0,
        width: img.width as f64,
        height: img.height as f64,
    };
    resize_crop(img, whole, out_w, out_h, false)
}

/// The size [`resize_shorter_side`] gives a `width` x `height` image (each side at least 1).
fn shorter_side_size(width: usize, height: usize, shorter: usize) -> (usize, usize) {
    let (w, h) = (width as f64, height as f64);
    let (out_w, out_h) = if width <= height {
        (shorter, (shorter as f64 * h / w) as usize)
    } else {
        ((shorter as f64 * w / h) as usize, shorter)
    };
    (out_w.max(1), out_h.max(1))
}

/// The centre `size` x `size` crop (torchvision `CenterCrop`: offsets rounded; pads with
/// black when the image is smaller).
pub fn center_crop(img: &GreyImage, size: usize) -> GreyImage {
    let top = ((img.height as f64 - size as f64) / 2.0).round() as isize;
    let left = ((img.width as f64 - size as f64) / 2.0).round() as isize;
    let mut pixels = vec![0.0f32; size * size];
    for y in 0..size {
        let sy = y as isize + top;
        if sy < 0 || sy >= img.height as isize {
            continue;
        }
        for x in 0..size {
            let sx = x as isize + left;
            if sx >= 0 && sx < img.width as isize {
                pixels[y * size + x] = img.get(sx as usize, sy as usize);
            }
        }
    }
    GreyImage {
        width: size,
        height: size,
        pixels,
    }
}

/// The shorter side, in pixels, an image is brought to when it is loaded, before any view
/// is drawn (when its own is longer): by the trainer's loader and its cache, by `predict`
/// and by the browser page alike, so that a file gets the same pixels everywhere. At 512 the
/// smallest crops of the default views (focal: 5 % of the area at 96 px; large: 30 % at
/// 224 px) still take about one source pixel per output pixel.
pub const LOAD_SHORTER_SIDE: usize = 512;

/// `img` as it is loaded: downscaled to [`LOAD_SHORTER_SIDE`] when its shorter side is
/// longer (what [`crate::decode::decode_downscaled`] gives, up to float rounding), else
/// itself.
pub fn into_loaded(img: GreyImage) -> GreyImage {
    if img.width.min(img.height) > LOAD_SHORTER_SIDE {
        resize_shorter_side(&img, LOAD_SHORTER_SIDE)
    } else {
        img
    }
}

/// The evaluation transform: shorter side to 256, centre crop 224. Give it the image as
/// loaded ([`into_loaded`]) to see what the trainer's evaluation sees.
pub fn eval_view<T: Intensity>(img: &Image<T>) -> GreyImage {
    center_crop(&resize_shorter_side(img, 256), 224)
}

/// Fine-tuning augmentation settings (METHOD.md section 7).
#[derive(Debug, Clone, PartialEq)]
pub struct AffineConfig {
    /// Rotation drawn uniformly in +-degrees. Default 45.
    pub degrees: f64,
    /// Translation drawn uniformly in +-fraction of the width and height. Default 0.15.
    pub translate: f64,
    /// Scale range. Default (0.85, 1.15).
    pub scale: (f64, f64),
    /// Horizontal flip probability. Default 0.5.
    pub flip_probability: f64,
}

impl Default for AffineConfig {
    fn default() -> Self {
        Self {
            degrees: 45.0,
            translate: 0.15,
            scale: (0.85, 1.15),
            flip_probability: 0.5,
        }
    }
}

/// The fine-tuning view: shorter side to 256, flip, random affine about the centre
/// (bilinear, black outside the image), centre crop 224.
pub fn train_view<T: Intensity>(
    img: &Image<T>,
    cfg: &AffineConfig,
    rng: &mut impl Rng,
) -> GreyImage {
    let resized = resize_shorter_side(img, 256);
    let flip = rng.random_bool(cfg.flip_probability);
    let angle = rng.random_range(-cfg.degrees..=cfg.degrees).to_radians();
    let max_dx = (cfg.translate * resized.width as f64).round();
    let max_dy = (cfg.translate * resized.height as f64).round();
    let dx = rng.random_range(-max_dx..=max_dx).round();
    let dy = rng.random_range(-max_dy..=max_dy).round();
    let scale = rng.random_range(cfg.scale.0..=cfg.scale.1);
    let moved = affine(&resized, angle, (dx, dy), scale, flip);
    center_crop(&moved, 224)
}

/// Applies flip, then rotation by `angle` (radians, counter-clockwise as displayed), scale
/// and translation about the image centre, by inverse mapping with bilinear sampling.
pub fn affine(img: &GreyImage, angle: f64, shift: (f64, f64), scale: f64, flip: bool) -> GreyImage {
    let (w, h) = (img.width, img.height);
    let (cx, cy) = (w as f64 * 0.5, h as f64 * 0.5);
    let (sin, cos) = angle.sin_cos();
    let mut pixels = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            // Output pixel centre relative to the centre, minus the translation.
            let ox = x as f64 + 0.5 - cx - shift.0;
            let oy = y as f64 + 0.5 - cy - shift.1;
            // Inverse rotation (y points down, so counter-clockwise as displayed) and scale.
            let sx = (cos * ox - sin * oy) / scale + cx;
            let sy = (sin * ox + cos * oy) / scale + cy;
            let sx = if flip { w as f64 - sx } else { sx };
            pixels[y * w + x] = bilinear(img, sx - 0.5, sy - 0.5);
        }
    }
    GreyImage {
        width: w,
        height: h,
        pixels,
    }
}

/// Bilinear sample at pixel-centre coordinates (x, y); black outside the image.
fn bilinear(img: &GreyImage, x: f64, y: f64) -> f32 {
    if x < -1.0 || y < -1.0 || x > img.width as f64 || y > img.height as f64 {
        return 0.0;
    }
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = ((x - x0) as f32, (y - y0) as f32);
    let at = |xi: f64, yi: f64| -> f32 {
        if xi < 0.0 || yi < 0.0 || xi >= img.width as f64 || yi >= img.height as f64 {
            0.0
        } else {
            img.get(xi as usize, yi as usize)
        }
    };
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1.0, y0) * fx;
    let bottom = at(x0, y0 + 1.0) * (1.0 - fx) + at(x0 + 1.0, y0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ramp(width: usize, height: usize) -> GreyImage {
        let pixels = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x + 2 * y) as f32 / (width + 2 * height) as f32))
            .collect();
        GreyImage::new(width, height, pixels).unwrap()
    }

    #[test]
    fn downscaling_bytes_equals_resizing_their_image() {
        for (w, h, side) in [(301, 517, 128), (640, 480, 479), (97, 64, 10), (50, 40, 40)] {
            let bytes: Vec<u8> = (0..w * h).map(|i| ((i * 7919) % 251) as u8).collect();
            let image = GreyImage::new(
                w,
                h,
                bytes
                    .iter()
                    .map(|&v| (f64::from(v) / 255.0) as f32)
                    .collect(),
            )
            .unwrap();
            let want = resize_shorter_side(&image, side);
            let got = downscale_grey8::<f32>(&bytes, w, h, side);
            assert_eq!((got.width, got.height), (want.width, want.height));
            assert_eq!(got.width.min(got.height), side);
            let worst = got
                .pixels
                .iter()
                .zip(&want.pixels)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-6, "{w}x{h} -> {side}: {worst}");
            // Straight to 16-bit levels: the floats' nearest levels, but for a float's
            // rounding at a half level.
            let levels = downscale_grey8::<u16>(&bytes, w, h, side);
            assert_eq!((levels.width, levels.height), (want.width, want.height));
            for (l, v) in levels.pixels.iter().zip(&want.pixels) {
                let exact = f64::from(*v) * 65535.0;
                assert!(
                    (f64::from(*l) - exact).abs() <= 0.5 + 0.1,
                    "{w}x{h} -> {side}: level {l} for {exact}"
                );
            }
        }
    }

    /// The antialiased bilinear resize computed directly, in f64: output pixel (x, y) is
    /// the product of a row and a column triangle weight over every source pixel, divided
    /// by the weights' sums.
    fn direct_resize(img: &GreyImage, crop: CropBox, out_w: usize, out_h: usize) -> Vec<f64> {
        let line = |src_len: usize, start: f64, len: f64, out: usize, i: usize| {
            let scale = len / out as f64;
            let support = scale.max(1.0);
            let center = start + (i as f64 + 0.5) * scale;
            let w: Vec<f64> = (0..src_len)
                .map(|j| (1.0 - ((j as f64 + 0.5 - center) / support).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            w.into_iter().map(|v| v / sum).collect::<Vec<f64>>()
        };
        let mut out = vec![0.0; out_w * out_h];
        for y in 0..out_h {
            let wy = line(img.height, crop.y, crop.height, out_h, y);
            for x in 0..out_w {
                let wx = line(img.width, crop.x, crop.width, out_w, x);
                out[y * out_w + x] = (0..img.height)
                    .flat_map(|j| (0..img.width).map(move |i| (i, j)))
                    .map(|(i, j)| wy[j] * wx[i] * f64::from(img.pixels[j * img.width + i]))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn resizing_matches_the_direct_weighted_sum_in_every_row_block() {
        let bytes: Vec<f32> = (0..61 * 47)
            .map(|i| ((i * 7919) % 251) as f32 / 250.0)
            .collect();
        let img = GreyImage::new(61, 47, bytes).unwrap();
        let cases = [
            // Shrinking, output heights around the 8-row blocks, at the edges and inside.
            (0.0, 0.0, 61.0, 47.0, 20, 17),
            (3.0, 5.0, 40.0, 33.0, 9, 8),
            (21.0, 14.0, 40.0, 33.0, 7, 9),
            (0.0, 30.0, 12.0, 17.0, 5, 1),
            // Enlarging a small crop.
            (50.0, 40.0, 11.0, 7.0, 30, 23),
            // Fewer source columns than one transposed tile, at the right edge.
            (56.5, 2.0, 4.5, 6.0, 3, 5),
            (58.0, 20.0, 3.0, 9.0, 11, 10),
        ];
        for (x, y, width, height, out_w, out_h) in cases {
            let crop = CropBox {
                x,
                y,
                width,
                height,
            };
            let want = direct_resize(&img, crop, out_w, out_h);
            for flip in [false, true] {
                let got = resize_crop(&img, crop, out_w, out_h, flip);
                for (i, g) in got.pixels.iter().enumerate() {
                    let (row, col) = (i / out_w, i % out_w);
                    let col = if flip { out_w - 1 - col } else { col };
                    let w = want[row * out_w + col];
                    assert!(
                        (f64::from(*g) - w).abs() < 1e-5,
                        "{crop:?} -> {out_w}x{out_h}, flip {flip}, pixel ({col}, {row}): {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_vector_width_resamples_to_the_same_bits() {
        let bytes: Vec<u8> = (0..333 * 271).map(|i| (i * 7 % 251) as u8).collect();
        let img =
            GreyImage::new(333, 271, bytes.iter().map(|&b| b as f32 / 255.0).collect()).unwrap();
        let crop = CropBox {
            x: 17.3,
            y: 5.9,
            width: 250.2,
            height: 231.7,
        };
        let float = |transpose| {
            simd::at_every_width(Resample {
                source: (&img.pixels, img.width, img.height),
                value: |p: f32| p,
                gain: 1.0,
                crop,
                out: (96, 96),
                flip: true,
                transpose,
                output: PhantomData,
            })
        };
        let whole = CropBox {
            x: 0.0,
            y: 0.0,
            width: 333.0,
            height: 271.0,
        };
        let grey8 = |transpose| {
            simd::at_every_width(Resample {
                source: (&bytes, 333, 271),
                value: f32::from,
                gain: 1.0 / 255.0,
                crop: whole,
                out: (113, 92),
                flip: false,
                transpose,
                output: PhantomData,
            })
        };
        // The loader's path: 8-bit samples straight to 16-bit levels.
        let levels = |transpose| -> Vec<Vec<u16>> {
            simd::at_every_width(Resample {
                source: (&bytes, 333, 271),
                value: f32::from,
                gain: 257.0,
                crop: whole,
                out: (113, 92),
                flip: false,
                transpose,
                output: PhantomData,
            })
        };
        let levels = [levels(Transpose::new()), levels(Transpose::scalar())].concat();
        assert!(levels.iter().all(|l| l == &levels[0]));
        let both = |outs: Vec<Vec<f32>>, scalar: Vec<Vec<f32>>| [outs, scalar].concat();
        let float = both(float(Transpose::new()), float(Transpose::scalar()));
        let grey8 = both(grey8(Transpose::new()), grey8(Transpose::scalar()));
        for outs in [float, grey8] {
            for out in &outs[1..] {
                assert!(
                    out.iter()
                        .zip(&outs[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
            }
        }
    }

    #[test]
    fn tiles_transpose_with_and_without_shuffles() {
        let tile: [[f32; TILE]; TILE] =
            std::array::from_fn(|i| std::array::from_fn(|j| (i * 10 + j) as f32));
        for transpose in [Transpose::new(), Transpose::scalar()] {
            let out = transpose.tile(tile);
            for (i, row) in tile.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    assert_eq!(out[j][i], *v, "element ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn crop_boxes_respect_scale_and_ratio_and_stay_inside() {
        let mut rng = StdRng::seed_from_u64(1);
        for (w, h) in [(1000, 800), (512, 512), (300, 900)] {
            for (scale, n) in [((0.3, 1.0), 500), ((0.05, 0.3), 500)] {
                let mut fallbacks = 0;
                for _ in 0..n {
                    let b = random_resized_crop_box(w, h, scale, (0.75, 4.0 / 3.0), &mut rng);
                    assert!(b.x >= 0.0 && b.y >= 0.0);
                    assert!(b.x + b.width <= w as f64 && b.y + b.height <= h as f64);
                    let frac = b.width * b.height / (w * h) as f64;
                    let ratio = b.width / b.height;
                    // Rounding to whole pixels moves the area and ratio slightly.
                    let in_scale = (scale.0 * 0.97..=scale.1 * 1.03).contains(&frac);
                    let in_ratio = (0.75 * 0.97..=4.0 / 3.0 * 1.03).contains(&ratio);
                    if !(in_scale && in_ratio) {
                        fallbacks += 1;
                    }
                }
                assert!(
                    fallbacks * 20 < n,
                    "{w}x{h} {scale:?}: {fallbacks} out of range"
                );
            }
        }
    }

    #[test]
    fn resizing_preserves_a_constant_and_the_mean_of_a_ramp() {
        let flat = GreyImage::new(37, 53, vec![0.25; 37 * 53]).unwrap();
        let whole = CropBox {
            x: 0.0,
            y: 0.0,
            width: 37.0,
            height: 53.0,
        };
        for (w, h) in [(10, 12), (96, 96), (200, 150)] {
            let out = resize_crop(&flat, whole, w, h, false);
            assert!(out.pixels.iter().all(|p| (p - 0.25).abs() < 1e-6));
        }
        let img = ramp(400, 300);
        let mean = |i: &GreyImage| i.pixels.iter().sum::<f32>() / i.pixels.len() as f32;
        let small = resize_crop(
            &img,
            CropBox {
                x: 0.0,
                y: 0.0,
                width: 400.0,
                height: 300.0,
            },
            40,
            30,
            false,
        );
        assert!((mean(&small) - mean(&img)).abs() < 2e-3);
    }

    #[test]
    fn flip_mirrors_and_identity_resize_is_exact() {
        let img = ramp(8, 6);
        let whole = CropBox {
            x: 0.0,
            y: 0.0,
            width: 8.0,
            height: 6.0,
        };
        assert_eq!(resize_crop(&img, whole, 8, 6, false), img);
        let flipped = resize_crop(&img, whole, 8, 6, true);
        for y in 0..6 {
            for x in 0..8 {
                assert_eq!(flipped.get(x, y), img.get(7 - x, y));
            }
        }
    }

    #[test]
    fn views_have_the_configured_sizes_and_are_reproducible() {
        let img = ramp(640, 512);
        let cfg = ViewConfig::default();
        let a = msn_views(&img, &cfg, &mut StdRng::seed_from_u64(3));
        let b = msn_views(&img, &cfg, &mut StdRng::seed_from_u64(3));
        let c = msn_views(&img, &cfg, &mut StdRng::seed_from_u64(4));
        assert_eq!((a.target.width, a.target.height), (224, 224));
        assert_eq!((a.anchor.width, a.anchor.height), (224, 224));
        assert_eq!(a.focal.len(), 10);
        assert!(a.focal.iter().all(|f| f.width == 96 && f.height == 96));
        assert_eq!(a.target, b.target);
        assert_eq!(a.focal[9], b.focal[9]);
        assert_ne!(a.target, c.target);
    }

    #[test]
    fn eval_and_train_views_are_224_and_identity_affine_changes_nothing() {
        let img = ramp(300, 400);
        let e = eval_view(&img);
        assert_eq!((e.width, e.height), (224, 224));
        let resized = resize_shorter_side(&img, 256);
        assert_eq!((resized.width, resized.height), (256, 341));
        let same = affine(&resized, 0.0, (0.0, 0.0), 1.0, false);
        for (a, b) in same.pixels.iter().zip(&resized.pixels) {
            assert!((a - b).abs() < 1e-6);
        }
        // A 90 degree turn of a square maps the top-left corner to the bottom-left.
        let sq = ramp(16, 16);
        let turned = affine(&sq, std::f64::consts::FRAC_PI_2, (0.0, 0.0), 1.0, false);
        assert!(
            (turned.get(0, 15) - sq.get(0, 0)).abs() < 1e-5,
            "{}",
            turned.get(0, 15)
        );
        let t = train_view(
            &img,
            &AffineConfig::default(),
            &mut StdRng::seed_from_u64(5),
        );
        assert_eq!((t.width, t.height), (224, 224));
    }
}
