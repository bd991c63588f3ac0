//! The browser demo of cxr-msn.
//!
//! The page (WASM through `wasm-bindgen`, built by `trunk`) is the subject of its own issue;
//! everything it computes goes through the `cxr-msn` model crate. What exists so far is the
//! first thing the page does with a downloaded model file: check it and describe it.

use cxr_msn::checkpoint::{ModelKind, read_meta};

/// Checks that `bytes` are a classifier model file the page can run and returns the
/// summary shown to the user, or the reason it cannot be used.
pub fn describe_model(bytes: &[u8]) -> Result<String, String> {
    let meta = read_meta(bytes).map_err(|e| e.to_string())?;
    if meta.kind != ModelKind::Classifier {
        return Err(format!(
            "this is a pretraining model; export a classifier with `cxr-msn export` first\n{meta}"
        ));
    }
    Ok(meta.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_model_is_refused_with_the_reason() {
        let err = describe_model(b"<html>not found</html>").unwrap_err();
        assert!(err.contains("not a readable cxr-msn model file"), "{err}");
    }
}
