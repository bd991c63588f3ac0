//! End-to-end tests across the crates live in `tests/tests/`; this library is empty.
//!
//! They run the real `cxr-msn` binary, so build it first (the project's test command,
//! `scripts/test`, does): `cargo build -p cxr-msn-trainer`. Set `CXR_MSN_BIN` to test
//! another build of it.
