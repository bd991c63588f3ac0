//! The browser demo of cxr-msn: a student drops a chest X-ray, enters demographics, and
//! sees the model's findings computed on their own machine (WebGPU, else the CPU).
//!
//! `engine` is what the page computes (and `learn`, what its learn mode shows), through the `cxr-msn` model crate and with no
//! browser in it (tested natively); `bindings` is its JavaScript API (wasm32 only), which
//! the page in `index.html` + `../static/` calls. `trunk build --release` in this folder
//! makes the static site.

pub mod engine;
pub mod learn;

#[cfg(target_arch = "wasm32")]
pub mod bindings;

/// Checks that `bytes` are a classifier model file the page can run and returns the
/// summary shown to the user, or the reason it cannot be used.
pub fn describe_model(bytes: &[u8]) -> Result<String, String> {
    engine::check_model(bytes).map(|meta| meta.to_string())
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
