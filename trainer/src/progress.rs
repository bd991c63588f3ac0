//! The progress line of long jobs: position, throughput (images/s), loss and the time left.
//! On a terminal it is redrawn in place on stderr; otherwise (logs, CI) it is written as a
//! plain line every `every` seconds.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A progress reporter for `total` steps of `images_per_step` images each.
pub struct Progress {
    total: usize,
    start_step: usize,
    images_per_step: usize,
    started: Instant,
    last_shown: Option<Instant>,
    every: Duration,
    interactive: bool,
}

/// `1h02m`, `4m05s`, `12s`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".into();
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Progress {
    /// Starts counting at step `start_step` of `total` (a resumed run starts later).
    pub fn new(start_step: usize, total: usize, images_per_step: usize) -> Self {
        Self {
            total,
            start_step,
            images_per_step,
            started: Instant::now(),
            last_shown: None,
            every: Duration::from_secs(30),
            interactive: std::io::stderr().is_terminal(),
        }
    }

    /// The line for `done` steps finished, with `status` (e.g. the epoch and the loss).
    pub fn line(&self, done: usize, status: &str) -> String {
        let ran = done.saturating_sub(self.start_step);
        let elapsed = self.started.elapsed().as_secs_f64();
        let per_step = if ran > 0 {
            elapsed / ran as f64
        } else {
            f64::NAN
        };
        let rate = self.images_per_step as f64 / per_step;
        let left = per_step * self.total.saturating_sub(done) as f64;
        let width = 20;
        let filled = (width * done / self.total.max(1)).min(width);
        format!(
            "[{}{}] {done}/{} steps | {} img/s | {status} | elapsed {} | ETA {}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.total,
            if rate.is_finite() {
                format!("{rate:.1}")
            } else {
                "?".into()
            },
            duration(elapsed),
            duration(left)
        )
    }

    /// Shows the line after a step: redrawn on a terminal, else written to `log` at most
    /// every 30 s (and after the first step, which tells whether the job runs at all).
    pub fn show(&mut self, done: usize, status: &str, log: &mut dyn Write) -> std::io::Result<()> {
        let line = self.line(done, status);
        if self.interactive {
            let mut err = std::io::stderr().lock();
            write!(err, "\r\x1b[2K{line}")?;
            return err.flush();
        }
        let due = self
            .last_shown
            .is_none_or(|t| t.elapsed() >= self.every || done == self.total);
        if due {
            self.last_shown = Some(Instant::now());
            writeln!(log, "{line}")?;
        }
        Ok(())
    }

    /// Ends the redrawn line before other output.
    pub fn finish_line(&self) {
        if self.interactive {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_lines_read_well() {
        assert_eq!(duration(5.2), "5s");
        assert_eq!(duration(245.0), "4m05s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(duration(f64::NAN), "?");
        let p = Progress::new(10, 20, 32);
        let line = p.line(10, "epoch 1/2");
        assert!(
            line.starts_with("[##########----------] 10/20 steps | ? img/s"),
            "{line}"
        );
        assert!(
            line.contains("epoch 1/2") && line.ends_with("ETA ?"),
            "{line}"
        );
    }
}
