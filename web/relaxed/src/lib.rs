//! The page's module with relaxed SIMD: every export of `cxr-msn-web`, unchanged
//! (`Cargo.toml` says how it differs).

pub use cxr_msn_web::*;
