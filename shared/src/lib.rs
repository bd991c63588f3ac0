//! # cxr-msn: multimodal Masked Siamese Networks for chest X-rays
//!
//! The model crate of the project: one Burn definition of the multimodal MSN of
//! Shurrab et al. 2024 (arXiv 2407.04449), which the native trainer trains and the browser
//! demo runs. It is generic over the Burn backend (the caller picks a [`burn::tensor::Device`])
//! and does no file-system, network or thread work, so it builds for
//! `wasm32-unknown-unknown` unchanged.
//!
//! What lives where:
//! - [`config`]: ViT presets, the `paper` and `msn` profiles, every knob with its default;
//! - [`vit`]: the Vision Transformer, position-grid resizing, attention capture;
//! - [`cpu_kernels`]: vectorised GELU and attention softmax for inference on the CPU;
//! - [`masking`]: per-sample token masking of anchor views;
//! - [`heads`]: projection head h, EHR fusion (f_ehr, g), classifier heads;
//! - [`msn`]: the full model (anchor branch, EMA target branch, prototypes) and its step;
//! - [`loss`]: the MSN loss (sharpening, Sinkhorn, me-max, entropy);
//! - [`ema`]: exponential moving averages of modules (MSN's target, DINO's teacher);
//! - [`dino`], [`mae`]: the DINO and MAE baselines on the same encoder;
//! - [`pretrained`]: a pretraining model of any method, and the encoder it leaves;
//! - [`ehr`]: EHR fields, the 23 named feature sets and their encoding;
//! - [`image`]: the decoded grey image;
//! - [`decode`]: PNG, JPEG and DICOM bytes to that grey image, with the DICOM header fields
//!   that prefill the EHR form;
//! - [`views`]: seeded MSN views (random resized crops, flips), evaluation and fine-tuning
//!   transforms;
//! - [`preprocess`]: grey views to `[B, 1, S, S]` batches;
//! - [`pixels`]: images as the encoder takes them, normalised channels or one grey
//!   channel whose normalisation the patch embedding folds into its kernel;
//! - [`labels`]: the MIMIC, CheXpert and NIH label sets and their orders;
//! - [`classifier`]: the downstream model (encoder + image and image + EHR heads);
//! - [`prototype_head`]: MSN's projection head and prototypes in a classifier file, and the
//!   prototype arithmetic on single images (the browser's learn mode);
//! - [`checkpoint`]: the self-describing model file, from and to bytes.
//!
//! Tensor shapes are written in each function's docs as `[B, C, H, W]` and the like:
//! B images, M anchor views per image, D the ViT width, K prototypes.

// Two modules call `unsafe` code, with the bounds it relies on checked first: gemm_call.rs
// (gemm's products) and gpu_kernels.rs (an unchecked kernel launch).
#![deny(unsafe_code)]

pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod cpu_kernels;
pub mod decode;
pub mod dino;
pub mod ehr;
pub mod ema;
pub mod error;
#[cfg(feature = "cpu-kernels")]
mod flex_forward;
#[cfg(feature = "cpu-kernels")]
mod gemm_call;
#[cfg(feature = "gpu-kernels")]
pub mod gpu_kernels;
#[cfg(feature = "autodiff")]
mod graph_kernels;
pub mod heads;
pub mod image;
mod init;
pub mod labels;
pub mod loss;
pub mod mae;
pub mod masking;
pub mod msn;
pub mod novelty;
pub mod pixels;
pub mod preprocess;
pub mod pretrained;
pub mod prototype_head;
mod simd;
pub mod views;
pub mod vit;

/// The random-number crate this crate's seeded APIs take generators from.
pub use rand;

pub use checkpoint::{ModelKind, ModelMeta};
pub use classifier::Classifier;
pub use config::{Method, MsnConfig, Profile, VitConfig, VitPreset};
pub use ehr::{EhrRecord, FeatureSet};
pub use error::{CheckpointError, ConfigError, DecodeError, EhrError, ShapeError};
pub use msn::{MsnBatch, MultimodalMsn};
