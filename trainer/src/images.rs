//! Image files to grey images, through the model crate's decoder (the same code the
//! browser runs), with the file's name in every error.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use cxr_msn::decode::{DecodeError, DecodeLimits, Decoded, decode, decode_downscaled16};
use cxr_msn::image::{GreyImage, Image};

use crate::loader::DecodeFn;

/// Reads and decodes one image file (PNG, JPEG or DICOM, recognised by content).
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<GreyImage> {
    read_and(path, |bytes| decode(bytes, limits))
}

/// The loader's decode function: [`decode_file`], downscaled to the loader's shorter side,
/// as 16-bit levels (see [`decode_downscaled16`]).
pub fn file_decoder(limits: DecodeLimits) -> Arc<DecodeFn> {
    Arc::new(move |path: &Path, shorter_side: usize| {
        read_and(path, |bytes| {
            decode_downscaled16(bytes, &limits, shorter_side)
        })
    })
}

/// Reads `path` and decodes its bytes with `decode`, naming the file in any error.
fn read_and<T>(
    path: &Path,
    decode: impl FnOnce(&[u8]) -> Result<Decoded<T>, DecodeError>,
) -> Result<Image<T>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let decoded = decode(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok(decoded.image)
}

/// Decodes every file on `threads` threads (0 = all cores) and returns the failures, in
/// the order of `paths`: (index, error message).
pub fn check_all(paths: &[&Path], limits: &DecodeLimits, threads: usize) -> Vec<(usize, String)> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let next = AtomicUsize::new(0);
    let mut failures: Vec<(usize, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut bad = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = paths.get(i) else {
                            return bad;
                        };
                        if let Err(e) = decode_file(path, limits) {
                            bad.push((i, format!("{e:#}")));
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a decoding thread panicked"))
            .collect()
    });
    failures.sort_by_key(|(i, _)| *i);
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_images_are_dropped_counted_and_named() {
        use crate::data::{OnBadRow, manifest};
        let dir = tempfile::tempdir().unwrap();
        let img = GreyImage::new(16, 16, vec![0.2; 256]).unwrap();
        std::fs::write(
            dir.path().join("a.png"),
            crate::synthetic::encode_png(&img).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("b.png"), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
        let csv = dir.path().join("m.csv");
        std::fs::write(&csv, "path,Edema\na.png,1\nb.png,0\nc.png,0\n").unwrap();
        let mut data = manifest::load(&csv, OnBadRow::Fail).unwrap();
        let failures = data.drop_unreadable_images(&DecodeLimits::default());
        assert_eq!(data.records.len(), 1);
        assert_eq!(failures.len(), 2);
        assert!(failures[0].0.ends_with("b.png") && failures[1].0.ends_with("c.png"));
        assert_eq!(data.report.kept, 1);
        assert_eq!(data.report.dropped["image cannot be read"], 2);
        assert_eq!(
            data.report.rows_read,
            data.report.kept + data.report.dropped_total()
        );
    }

    #[test]
    fn failures_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.png");
        let img = GreyImage::new(20, 16, vec![0.5; 320]).unwrap();
        std::fs::write(&good, crate::synthetic::encode_png(&img).unwrap()).unwrap();
        let text = dir.path().join("notes.jpg");
        std::fs::write(&text, "not an image").unwrap();
        let missing = dir.path().join("missing.png");
        let paths = [good.as_path(), text.as_path(), missing.as_path()];
        let failures = check_all(&paths, &DecodeLimits::default(), 2);
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0].0, 1);
        assert!(failures[0].1.contains("notes.jpg"), "{}", failures[0].1);
        assert!(failures[1].1.contains("cannot read") && failures[1].1.contains("missing.png"));
        let back = decode_file(&good, &DecodeLimits::default()).unwrap();
        assert_eq!((back.width, back.height), (20, 16));
        assert!((back.pixels[0] - 128.0 / 255.0).abs() < 1e-6);
    }
}
