//! Reading a foreign checkpoint: every tensor of a PyTorch file (`.pt`, `.pth`,
//! `.pth.tar`, a Lightning `.ckpt`; zip or legacy pickle) or a safetensors file, named by
//! its path through the file's nested dictionaries and lists joined with dots
//! (`target_encoder.module.blocks.0.attn.qkv.weight`, `opt.state.0.exp_avg`).
//!
//! Tensors stay lazy until drawn: a checkpoint with a large optimiser state costs only the
//! bytes of the tensors that are used.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{ModuleStore, PytorchStore, SafetensorsStore};

/// The two containers a checkpoint can come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// `torch.save`: a zip archive (PyTorch >= 1.6) or a legacy pickle stream.
    PyTorch,
    /// Hugging Face safetensors.
    Safetensors,
}

impl Container {
    /// Tells the container from the first bytes of a file.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.len() >= 9 && head[8] == b'{' {
            return Some(Self::Safetensors);
        }
        if head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80) {
            return Some(Self::PyTorch);
        }
        None
    }
}

/// The metadata entries of a safetensors file (`None` for other files). Reads the header
/// only.
pub fn safetensors_metadata(path: &Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = usize::try_from(u64::from_le_bytes(len)).ok()?;
    if len > 100_000_000 {
        return None;
    }
    let mut header = vec![0u8; len];
    file.read_exact(&mut header).ok()?;
    let mut header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    match header.get_mut("__metadata__")?.take() {
        serde_json::Value::Object(entries) => Some(entries),
        _ => None,
    }
}

/// The number of attention heads a safetensors file's metadata records (`export-torch`
/// writes it under [`super::export::HEADS_KEY`]); `None` for other files or without it.
pub fn recorded_heads(path: &Path) -> Option<usize> {
    safetensors_metadata(path)?
        .get(super::export::HEADS_KEY)?
        .as_str()?
        .parse()
        .ok()
        .filter(|&h: &usize| h > 0)
}

/// Every tensor of the checkpoint at `path`, lazily read.
pub fn read_tensors(path: &Path) -> Result<Vec<PackTensor>> {
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let tensors = match Container::sniff(&head[..n]) {
        Some(Container::Safetensors) => {
            all_tensors(SafetensorsStore::from_file(path), path, "safetensors file")?
        }
        // Indices stay as in the file (`mlp.3`, `layers.6`): the layouts name them.
        Some(Container::PyTorch) => all_tensors(
            PytorchStore::from_file(path).map_indices_contiguous(false),
            path,
            "PyTorch checkpoint",
        )?,
        None => bail!(
            "{}: neither a PyTorch checkpoint (torch.save: zip or pickle) nor a safetensors \
             file",
            path.display()
        ),
    };
    if tensors.is_empty() {
        bail!("{}: the file holds no tensors", path.display());
    }
    Ok(tensors)
}

/// Every tensor a store holds, lazily, with the file named in the error.
fn all_tensors<S: ModuleStore>(mut store: S, path: &Path, what: &str) -> Result<Vec<PackTensor>> {
    let tensors = store
        .get_all_tensors()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{}: not a readable {what}", path.display()))?;
    Ok(tensors.values().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_told_by_their_first_bytes() {
        assert_eq!(
            Container::sniff(b"PK\x03\x04rest"),
            Some(Container::PyTorch)
        );
        assert_eq!(
            Container::sniff(&[0x80, 0x02, 0x8a]),
            Some(Container::PyTorch)
        );
        let mut st = 42u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{\"a\":1}");
        assert_eq!(Container::sniff(&st), Some(Container::Safetensors));
        assert_eq!(Container::sniff(b"\x89PNG\r\n\x1a\n...."), None);
        assert_eq!(Container::sniff(b""), None);
    }

    #[test]
    fn a_file_that_is_no_checkpoint_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.pth");
        std::fs::write(&path, "these are notes, not weights").unwrap();
        let err = format!("{:#}", read_tensors(&path).unwrap_err());
        assert!(
            err.contains("notes.pth") && err.contains("neither"),
            "{err}"
        );
        let missing = dir.path().join("absent.pth");
        let err = format!("{:#}", read_tensors(&missing).unwrap_err());
        assert!(err.contains("absent.pth"), "{err}");
    }
}
