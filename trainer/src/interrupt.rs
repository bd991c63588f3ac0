//! Ctrl-C and SIGTERM: the first one asks long jobs to stop at the next safe point (after
//! the current step, with a checkpoint); a second one ends the process at once.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    REQUESTED.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the handlers (once; later calls do nothing). Errors are returned, not fatal:
/// without handlers Ctrl-C simply ends the process as usual.
pub fn install() -> std::io::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let flag = flag();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Order matters: the conditional exit sees the flag before this signal sets it, so
        // the first signal only sets it and the second exits with 130 (128 + SIGINT).
        signal_hook::flag::register_conditional_shutdown(signal, 130, flag.clone())?;
        signal_hook::flag::register(signal, flag.clone())?;
    }
    let _ = INSTALLED.set(());
    Ok(())
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}
