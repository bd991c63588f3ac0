//! Weights in and out of the PyTorch world.
//!
//! - [`import`]: a foreign checkpoint (the official MSN release, the authors' Lightning
//!   checkpoint, a torchvision or timm ViT) becomes a cxr-msn pretraining model file, with a
//!   report of every tensor loaded, skipped or missing. Reading uses burn-store's PyTorch and
//!   safetensors readers ([`source`]), names are translated with its `KeyRemapper`
//!   ([`layout`]), and the tensors that need more than a new name (position grids of another
//!   size, RGB patch embeddings for a grey model) are adapted in [`adapt`].
//! - [`export`]: our encoder as a safetensors file with torchvision or timm names.
//! - [`onnx`]: a model file as an ONNX graph, written here operator by operator (Burn 0.22
//!   reads ONNX but cannot write it, and no maintained Rust crate exports a Burn module);
//!   [`onnx_proto`] encodes ONNX's messages.

pub mod adapt;
pub mod export;
pub mod import;
pub mod layout;
pub mod onnx;
pub mod onnx_proto;
pub mod source;

/// One line on the architecture of a model file, as import and export print it.
fn describe_vit(v: &cxr_msn::config::VitConfig) -> String {
    format!(
        "ViT width {}, depth {}, heads {}, patch {}, MLP {}, at {} px, {} channel(s)",
        v.dim,
        v.depth,
        v.heads,
        v.patch_size,
        v.mlp_ratio * v.dim,
        v.image_size,
        v.channels
    )
}
