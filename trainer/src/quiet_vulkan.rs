//! Silences Mesa's Vulkan device-select layer on headless Linux machines.
//!
//! When Mesa is installed, the Vulkan loader runs its device-select layer on every
//! instance; without a valid `XDG_RUNTIME_DIR` (a server reached over SSH, a container, a
//! CI job) the layer looks for a Wayland display and prints `error: XDG_RUNTIME_DIR is
//! invalid or not set in the environment.` a few times, although nothing is wrong and the
//! adapter probe goes on. Researchers read those lines as failures. The layer only
//! reorders the devices the loader lists (the trainer picks its adapter itself, see
//! `device.rs`), so where no runtime folder exists and the user has not configured the
//! layer (`MESA_VK_DEVICE_SELECT`, `NODEVICE_SELECT`), the binary turns it off with
//! `NODEVICE_SELECT=1` for itself.
//!
//! One of the project's modules with `unsafe` code: since Rust 2024 setting an
//! environment variable is `unsafe`, because another thread reading the environment at
//! the same moment is undefined behaviour. [`quiet_device_select`] is called first thing
//! in `main`, before any thread exists.

#![allow(unsafe_code)]

use std::path::Path;

/// Turns Mesa's device-select layer off when it would only complain: no usable
/// `XDG_RUNTIME_DIR` and the layer not configured by the user. Call before any thread is
/// started.
pub fn quiet_device_select() {
    let runtime_dir_ok =
        std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|dir| Path::new(&dir).is_dir());
    let configured = std::env::var_os("MESA_VK_DEVICE_SELECT").is_some()
        || std::env::var_os("NODEVICE_SELECT").is_some();
    if !runtime_dir_ok && !configured {
        // SAFETY: called at the start of `main`, before the program starts any thread, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}
