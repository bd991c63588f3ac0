//! Vision Transformer (Dosovitskiy et al. 2021, arXiv 2010.11929) as used by DeiT and MSN:
//! patch 16, pre-norm blocks, exact GELU, qkv with bias, learned [CLS] and position
//! embedding, final LayerNorm; the output is the [CLS] token after that LayerNorm.
//!
//! Two things MSN needs beyond a plain ViT:
//! - inputs of another size than the learned grid (96 px focal views): the patch part of
//!   the position embedding is resized bicubically (align-corners false), the [CLS]
//!   position is kept ([`resize_position_grid`]);
//! - token masking: a per-sample subset of patch tokens is kept after the position
//!   embedding is added, and the rest are removed ([`crate::masking`]).
//!
//! Parameter names follow timm / DeiT (`patch_embed.proj`, `blocks.N.attn.qkv`, ...), so
//! PyTorch checkpoints map onto this module tree one to one.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::VitConfig;
use crate::cpu_kernels;
use crate::error::ShapeError;
use crate::init::{deit_linear, normal_002};
use crate::pixels::Pixels;

/// Splits an image into non-overlapping patches and embeds each (a strided convolution).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// Conv2d(channels -> D, kernel = stride = patch).
    pub proj: Conv2d,
}

/// Multi-head self-attention with a fused qkv projection.
#[derive(Module, Debug)]
pub struct Attention {
    /// Linear(D -> 3D), with bias.
    pub qkv: Linear,
    /// Linear(D -> D).
    pub proj: Linear,
    /// Number of heads.
    pub num_heads: usize,
}

impl Attention {
    /// `x`: `[B, N, D]` -> (`[B, N, D]`, attention weights `[B, heads, N, N]` when asked).
    pub fn forward(&self, x: Tensor<3>, keep_weights: bool) -> (Tensor<3>, Option<Tensor<4>>) {
        let [b, n, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let qkv = cpu_kernels::linear(&self.qkv, x);
        if !keep_weights && let Some(heads) = cpu_kernels::attention_from_qkv(&qkv, h, 0..h) {
            return (cpu_kernels::linear(&self.proj, heads), None);
        }
        if keep_weights && let Some((heads, weights)) = cpu_kernels::attention_and_weights(&qkv, h)
        {
            return (cpu_kernels::linear(&self.proj, heads), Some(weights));
        }
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([b, n, h, hd])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let (out, weights) = if keep_weights {
            let weights = attention_weights(q, k);
            (weights.clone().matmul(v), Some(weights))
        } else {
            (attend(q, k, v), None)
        };
        let out = out.swap_dims(1, 2).reshape([b, n, d]);
        (cpu_kernels::linear(&self.proj, out), weights)
    }
}

/// `softmax(q k^T / sqrt(head width))`: `q` `[B, H, N, hd]`, `k` `[B, H, M, hd]` ->
/// `[B, H, N, M]`.
fn attention_weights(q: Tensor<4>, k: Tensor<4>) -> Tensor<4> {
    let hd = q.dims()[3];
    let scale = (hd as f64).powf(-0.5);
    if cpu_kernels::softmax_has_kernels(cpu_kernels::route(&q)) {
        return cpu_kernels::scaled_softmax(q.matmul(k.swap_dims(2, 3)), scale as f32);
    }
    softmax(q.mul_scalar(scale).matmul(k.swap_dims(2, 3)), 3)
}

/// Scaled dot-product attention `softmax(q k^T / sqrt(hd)) v`: `[B, H, N, hd]` each ->
/// `[B, H, N, hd]`, where [`cpu_kernels::attention_from_qkv`] does not run (off the CPU,
/// or without the model crate's `cpu-kernels` feature). On the CPU backend without
/// autodiff, two matrix products around [`cpu_kernels::scaled_softmax`]; elsewhere the
/// backend's fused kernel (the same composed operations on autodiff backends).
fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    if cpu_kernels::softmax_has_kernels(cpu_kernels::route(&q)) {
        return attention_weights(q, k).matmul(v);
    }
    let hd = q.dims()[3];
    let options = AttentionModuleOptions {
        scale: Some((hd as f64).powf(-0.5)),
        ..Default::default()
    };
    attention(q, k, v, None, None, options)
}

/// The block's feed-forward part: Linear -> GELU (exact) -> Linear.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Linear(D -> mlp_ratio x D).
    pub fc1: Linear,
    /// Linear(mlp_ratio x D -> D).
    pub fc2: Linear,
}

impl Mlp {
    /// `[B, N, D]` -> `[B, N, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        cpu_kernels::linear(
            &self.fc2,
            cpu_kernels::gelu(cpu_kernels::linear(&self.fc1, x)),
        )
    }
}

/// Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    /// LayerNorm before attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// LayerNorm before the MLP.
    pub norm2: LayerNorm,
    /// Feed-forward.
    pub mlp: Mlp,
    /// The epsilon `norm1` and `norm2` were made with (Burn's LayerNorm keeps its own
    /// private), for [`cpu_kernels::layer_norm`].
    pub norm_eps: f64,
}

impl Block {
    /// A block of width `dim` with DeiT initialisation (N(0, 0.02) weights, zero biases,
    /// unit LayerNorms).
    pub fn new(dim: usize, heads: usize, mlp_ratio: usize, eps: f64, device: &Device) -> Self {
        let ln = || LayerNormConfig::new(dim).with_epsilon(eps).init(device);
        Block {
            norm1: ln(),
            attn: Attention {
                qkv: deit_linear(dim, 3 * dim, true, device),
                proj: deit_linear(dim, dim, true, device),
                num_heads: heads,
            },
            norm2: ln(),
            mlp: Mlp {
                fc1: deit_linear(dim, mlp_ratio * dim, true, device),
                fc2: deit_linear(mlp_ratio * dim, dim, true, device),
            },
            norm_eps: eps,
        }
    }

    /// `[B, N, D]` -> `[B, N, D]`, plus this block's attention weights when asked.
    pub fn forward(&self, x: Tensor<3>, keep_weights: bool) -> (Tensor<3>, Option<Tensor<4>>) {
        let (a, weights) = self
            .attn
            .forward(self.attention_norm(x.clone()), keep_weights);
        let x = x + a;
        let x = x.clone() + self.mlp.forward(self.mlp_norm(x));
        (x, weights)
    }

    /// `norm1(x)`, `[.., D]` -> `[.., D]`.
    fn attention_norm<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        cpu_kernels::layer_norm(&self.norm1, self.norm_eps, x)
    }

    /// `norm2(x)`, `[.., D]` -> `[.., D]`.
    fn mlp_norm<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        cpu_kernels::layer_norm(&self.norm2, self.norm_eps, x)
    }

    /// [`Self::forward`] without attention weights, its work cut into `pieces.count()`
    /// pieces: layer norms, projections and the MLP over consecutive pieces of the tokens,
    /// attention over groups of heads. `[B, N, D]` -> `[B, N, D]`, the same values up to
    /// floating-point summation order.
    pub fn forward_in_pieces(&self, x: Tensor<3>, pieces: &dyn Pieces) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let count = pieces.count().min(n);
        if count <= 1 {
            return self.forward(x, false).0;
        }
        let tokens = |i: usize| {
            let (start, len) = piece(i, count, n);
            x.clone().narrow(1, start, len)
        };
        // [B, N, 3D]: q, k and v of every token, each head-major.
        let qkv = Tensor::cat(
            pieces.run(count, &|i| {
                cpu_kernels::linear(&self.attn.qkv, self.attention_norm(tokens(i)))
            }),
            1,
        );
        let h = self.attn.num_heads;
        let hd = d / h;
        let groups = count.min(h);
        // [B, N, D]: each group's heads side by side, as the whole attention lays them out.
        let heads = Tensor::cat(
            pieces.run(groups, &|i| {
                let (first, len) = piece(i, groups, h);
                if let Some(out) = cpu_kernels::attention_from_qkv(&qkv, h, first..first + len) {
                    return out;
                }
                let part = |which: usize| {
                    qkv.clone()
                        .narrow(2, which * d + first * hd, len * hd)
                        .reshape([b, n, len, hd])
                        .swap_dims(1, 2)
                };
                attend(part(0), part(1), part(2))
                    .swap_dims(1, 2)
                    .reshape([b, n, len * hd])
            }),
            2,
        );
        Tensor::cat(
            pieces.run(count, &|i| {
                let (start, len) = piece(i, count, n);
                let y = tokens(i)
                    + cpu_kernels::linear(&self.attn.proj, heads.clone().narrow(1, start, len));
                y.clone() + self.mlp.forward(self.mlp_norm(y))
            }),
            1,
        )
    }
}

/// The ViT image encoder.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Patch embedding.
    pub patch_embed: PatchEmbed,
    /// Learned [CLS] token, `[1, 1, D]`.
    pub cls_token: Param<Tensor<3>>,
    /// Learned position embedding for the configured grid, `[1, 1 + G*G, D]`.
    pub pos_embed: Param<Tensor<3>>,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm.
    pub norm: LayerNorm,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    pub channels: usize,
}

/// What [`VisionTransformer::forward_detailed`] returns.
#[derive(Debug, Clone)]
pub struct VitOutput {
    /// [CLS] after the final LayerNorm, `[B, D]`.
    pub cls: Tensor<2>,
    /// Every token after the final LayerNorm, `[B, 1 + kept patches, D]` ([CLS] first).
    pub tokens: Tensor<3>,
    /// Attention weights of each block, `[B, heads, T, T]` with T = 1 + kept patches;
    /// empty unless asked for.
    pub attention: Vec<Tensor<4>>,
}

impl VitConfig {
    /// Builds the encoder with DeiT initialisation (N(0, 0.02) weights, zero biases).
    pub fn init(&self, device: &Device) -> VisionTransformer {
        let d = self.dim;
        let g = self.grid();
        let proj = Conv2dConfig::new([self.channels, d], [self.patch_size, self.patch_size])
            .with_stride([self.patch_size, self.patch_size])
            .init(device);
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let blocks = (0..self.depth)
            .map(|_| Block::new(d, self.heads, self.mlp_ratio, self.layer_norm_eps, device))
            .collect();
        VisionTransformer {
            patch_embed: PatchEmbed { proj },
            cls_token: normal_002().init([1, 1, d], device),
            pos_embed: normal_002().init([1, 1 + g * g, d], device),
            blocks,
            norm: ln(),
            patch_size: self.patch_size,
            channels: self.channels,
        }
    }
}

impl VisionTransformer {
    /// Token width D.
    pub fn dim(&self) -> usize {
        self.cls_token.lazy_shape().dims::<3>()[2]
    }

    /// Side of the learned position grid.
    pub fn grid(&self) -> usize {
        let n = self.pos_embed.lazy_shape().dims::<3>()[1] - 1;
        (n as f64).sqrt().round() as usize
    }

    /// Patch tokens of a square input of side `image_size`.
    pub fn patches_for(&self, image_size: usize) -> usize {
        let g = image_size / self.patch_size;
        g * g
    }

    /// Checks an input batch against the model: `[B, C, S, S]` as the encoder sees it
    /// ([`Pixels::dims`]), grey images as one channel with a mean and a standard deviation
    /// for each of the C.
    pub fn check_input(&self, images: &Pixels) -> Result<(), ShapeError> {
        let dims = images.dims();
        if let Pixels::Grey {
            grey,
            normalization,
        } = images
        {
            let held = grey.dims()[1];
            if held != 1 || normalization.std.len() != normalization.mean.len() {
                return Err(ShapeError::Mismatch {
                    what: "grey ViT input".into(),
                    expected: "one channel, and one standard deviation per mean".into(),
                    got: format!(
                        "{held} channels, {} means and {} standard deviations",
                        normalization.mean.len(),
                        normalization.std.len()
                    ),
                });
            }
        }
        let [_, c, h, w] = dims;
        if c != self.channels || h != w || h == 0 || h % self.patch_size != 0 {
            return Err(ShapeError::Mismatch {
                what: "ViT input".into(),
                expected: format!(
                    "[B, {}, S, S] with S a positive multiple of {}",
                    self.channels, self.patch_size
                ),
                got: format!("{dims:?}"),
            });
        }
        Ok(())
    }

    /// [CLS] embeddings `[B, D]` of images `[B, C, S, S]` ([`Pixels`]: normalised
    /// channels, or a grey plane `[B, 1, S, S]` with its normalisation).
    ///
    /// `keep`: optional `[B, K]` indices (in `0..N`, N = (S/16)^2) of the patch tokens each
    /// sample keeps; the rest are dropped. [CLS] is always kept.
    ///
    /// # Panics
    /// On inputs that fail [`Self::check_input`]; call it first on untrusted shapes.
    pub fn forward(&self, images: impl Into<Pixels>, keep: Option<Tensor<2, Int>>) -> Tensor<2> {
        self.forward_detailed(images, keep, false).cls
    }

    /// The tokens that enter the first block, `[B, 1 + kept patches, D]` ([CLS] first):
    /// patch embeddings plus the (resized) position embedding, the kept subset of them, and
    /// [CLS] with its position.
    fn tokens_in(&self, images: Pixels, keep: Option<Tensor<2, Int>>) -> Tensor<3> {
        let [b, _, s, _] = images.dims();
        let d = self.dim();
        let g = s / self.patch_size;

        // [B, D, g, g] -> [B, g*g, D]
        let patches = cpu_kernels::patch_embed(&self.patch_embed.proj, images);
        let pos = resize_position_grid(self.pos_embed.val(), g);
        let patches = patches + pos.clone().narrow(1, 1, g * g);
        let patches = match keep {
            Some(keep) => {
                let [kb, _] = keep.dims();
                assert_eq!(kb, b, "keep indices must have one row per image");
                let index = keep.unsqueeze_dim::<3>(2).repeat_dim(2, d);
                patches.gather(1, index)
            }
            None => patches,
        };
        let cls = (self.cls_token.val() + pos.narrow(1, 0, 1)).repeat_dim(0, b);
        Tensor::cat(vec![cls, patches], 1)
    }

    /// Like [`Self::forward`], returning every token and, when `attention` is true, the
    /// attention weights of every block (for explanation maps).
    pub fn forward_detailed(
        &self,
        images: impl Into<Pixels>,
        keep: Option<Tensor<2, Int>>,
        attention: bool,
    ) -> VitOutput {
        let images = images.into();
        let [b, _, _, _] = images.dims();
        let d = self.dim();
        let mut x = self.tokens_in(images, keep);
        let mut weights = Vec::new();
        for block in &self.blocks {
            let (next, w) = block.forward(x, attention);
            x = next;
            weights.extend(w);
        }
        let tokens = self.norm.forward(x);
        let cls = tokens.clone().narrow(1, 0, 1).reshape([b, d]);
        VitOutput {
            cls,
            tokens,
            attention: weights,
        }
    }

    /// [CLS] embeddings `[B, D]` of images `[B, C, S, S]`, every token kept, with each
    /// block's work cut into `pieces` (over tokens, and over heads for attention): the
    /// same values as [`Self::forward`] up to floating-point summation order. For one
    /// image on a CPU, where a batch has nothing to split across the cores.
    ///
    /// # Panics
    /// On inputs that fail [`Self::check_input`].
    pub fn forward_in_pieces(&self, images: impl Into<Pixels>, pieces: &dyn Pieces) -> Tensor<2> {
        let images = images.into();
        let [b, _, _, _] = images.dims();
        let d = self.dim();
        let x = self.tokens_in(images, None);
        let x = self
            .blocks
            .iter()
            .fold(x, |x, block| block.forward_in_pieces(x, pieces));
        self.norm.forward(x.narrow(1, 0, 1)).reshape([b, d])
    }
}

/// Runs independent pieces of a forward pass: the trainer's CPU runner on all cores at
/// once, [`InOrder`] one after another.
pub trait Pieces: Sync {
    /// How many pieces a block's work is cut into; 1 runs each block whole.
    fn count(&self) -> usize;
    /// `[f(0), f(1), .., f(n - 1)]`, in this order.
    fn run(&self, n: usize, f: &(dyn Fn(usize) -> Tensor<3> + Sync)) -> Vec<Tensor<3>>;
}

/// [`Pieces`] run one after another on the calling thread.
#[derive(Debug, Clone, Copy)]
pub struct InOrder(
    /// How many pieces a block's work is cut into.
    pub usize,
);

impl Pieces for InOrder {
    fn count(&self) -> usize {
        self.0
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) -> Tensor<3> + Sync)) -> Vec<Tensor<3>> {
        (0..n).map(f).collect()
    }
}

/// `(start, len)` of piece `i` of `n` pieces over `total` items: consecutive, in order,
/// sizes differing by at most one.
fn piece(i: usize, n: usize, total: usize) -> (usize, usize) {
    let (start, end) = (i * total / n, (i + 1) * total / n);
    (start, end - start)
}

/// Resizes the patch part of a position embedding `[1, 1 + G*G, D]` to a `grid x grid`
/// layout by bicubic interpolation (align-corners false, as PyTorch's
/// `F.interpolate(..., mode="bicubic")`), keeping the [CLS] position as is.
/// Returns `[1, 1 + grid*grid, D]`; the input itself when the grid already matches.
///
/// Bicubic resizing is linear, so it is computed as `W P W^T` with a `[grid, G]` weight
/// matrix built on the host: two matrix products, differentiable on every backend (the GPU
/// backends have no backward pass for their bicubic kernel).
pub fn resize_position_grid(pos: Tensor<3>, grid: usize) -> Tensor<3> {
    let [one, n, d] = pos.dims();
    let g = ((n - 1) as f64).sqrt().round() as usize;
    assert_eq!(
        g * g + 1,
        n,
        "position embedding must hold [CLS] + a square grid"
    );
    if g == grid {
        return pos;
    }
    let device = pos.device();
    let w = Tensor::<2>::from_data(
        TensorData::new(bicubic_weights(g, grid), [grid, g]),
        &device,
    );
    let cls = pos.clone().narrow(1, 0, 1);
    // [D, G, G]: one grid per channel.
    let patch_grid = pos
        .narrow(1, 1, g * g)
        .reshape([g, g, d])
        .permute([2, 0, 1]);
    let rows = w.clone().unsqueeze::<3>().expand([d, grid, g]);
    let cols = w.transpose().unsqueeze::<3>().expand([d, g, grid]);
    let resized = rows
        .matmul(patch_grid)
        .matmul(cols)
        .permute([1, 2, 0])
        .reshape([one, grid * grid, d]);
    Tensor::cat(vec![cls, resized], 1)
}

/// Row-major `[out_len, in_len]` weights of PyTorch's bicubic resampling of one axis
/// (align-corners false, cubic coefficient A = -0.75, source positions not clamped,
/// sample indices clamped to the border).
pub fn bicubic_weights(in_len: usize, out_len: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = in_len as f64 / out_len as f64;
    let mut w = vec![0.0f64; out_len * in_len];
    for i in 0..out_len {
        let src = (i as f64 + 0.5) * scale - 0.5;
        let x0 = src.floor();
        let t = src - x0;
        let coeffs = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, c) in coeffs.into_iter().enumerate() {
            let j = (x0 as i64 - 1 + k as i64).clamp(0, in_len as i64 - 1) as usize;
            w[i * in_len + j] += c;
        }
    }
    w.into_iter().map(|v| v as f32).collect()
}

/// Explanation map from one block's attention weights `[B, heads, T, T]` (T = 1 + g*g,
/// unmasked): how much [CLS] attends to each patch, averaged over heads, as a `[B, g, g]`
/// grid in image layout (row-major, top-left first). Each map sums to 1 minus the
/// attention [CLS] pays to itself.
pub fn cls_attention_map(weights: Tensor<4>) -> Tensor<3> {
    let [b, h, t, _] = weights.dims();
    let g = ((t - 1) as f64).sqrt().round() as usize;
    assert_eq!(
        g * g + 1,
        t,
        "attention over [CLS] + a square grid of patches"
    );
    weights
        .narrow(2, 0, 1)
        .narrow(3, 1, t - 1)
        .sum_dim(1)
        .div_scalar(h as f64)
        .reshape([b, g, g])
}
