//! The synthetic X-ray world: a seeded generator of chest-radiograph-like images with
//! labels and EHR, so that everything runs with no download.
//!
//! It writes ordinary files, `images/NNNNNN.png` (8-bit grey) and `manifest.csv`, read back
//! by the manifest adapter like anyone's own data, so the real code path is exercised.
//! Manifest columns: `path`, the 14 MIMIC labels (1 / 0), `sex`, `age`, `view`,
//! `orientation`, `icu`, `mortality`, `split`, `patient_id`.

pub mod render;
pub mod world;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use cxr_msn::ehr::{Orientation, Sex, ViewPosition};
use cxr_msn::image::GreyImage;
use cxr_msn::labels::MIMIC_LABELS;
use cxr_msn::rand::SeedableRng;
use cxr_msn::rand::rngs::StdRng;

use crate::files::write_atomic;
use world::{NihStats, Subject, sample_subject};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Number of images. Default 2000.
    pub count: usize,
    /// Side of the square images in pixels. Default 256.
    pub size: usize,
    /// Seed of the whole world: the same seed gives the same files. Default 7.
    pub seed: u64,
    /// Worker threads; 0 = all cores. Default 0.
    pub threads: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            count: 2000,
            size: 256,
            seed: 7,
            threads: 0,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    /// The manifest written.
    pub manifest: PathBuf,
    /// Images written.
    pub images: usize,
    /// Positive count per MIMIC label.
    pub positives: [usize; 14],
    /// Images of an earlier, larger world in the same folder that were removed (its
    /// `NNNNNN.png` files past the new count).
    pub removed: usize,
}

/// Subject `index` of the world `seed`, independent of threads and of the other subjects.
pub fn subject(stats: &NihStats, seed: u64, index: usize) -> Subject {
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    sample_subject(stats, &mut rng)
}

/// Split of image `index`: 80% train, 10% validate, 10% test (every image is its own patient).
pub fn split(index: usize) -> &'static str {
    match index % 10 {
        8 => "validate",
        9 => "test",
        _ => "train",
    }
}

/// Encodes a grey image as an 8-bit grey PNG.
pub fn encode_png(img: &GreyImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("PNG header")?;
    let bytes: Vec<u8> = img
        .pixels
        .iter()
        .map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    writer.write_image_data(&bytes).context("PNG data")?;
    writer.finish().context("PNG end")?;
    Ok(out)
}

fn manifest_header() -> String {
    let mut h = String::from("path");
    for label in MIMIC_LABELS {
        h.push(',');
        h.push_str(label);
    }
    h.push_str(",sex,age,view,orientation,icu,mortality,split,patient_id\n");
    h
}

fn manifest_row(path: &str, s: &Subject, index: usize) -> String {
    let mut row = String::from(path);
    for f in s.findings {
        row.push_str(if f { ",1" } else { ",0" });
    }
    let sex = match s.sex {
        Sex::Male => "M",
        Sex::Female => "F",
    };
    let view = match s.view {
        ViewPosition::Pa => "PA",
        ViewPosition::Ap => "AP",
        ViewPosition::Lateral => "LATERAL",
        ViewPosition::Ll => "LL",
    };
    let orientation = match s.orientation {
        Orientation::Erect => "Erect",
        Orientation::Recumbent => "Recumbent",
    };
    let _ = writeln!(
        row,
        ",{sex},{},{view},{orientation},{},{},{},{}",
        s.age,
        s.icu as u8,
        s.died as u8,
        split(index),
        index
    );
    row
}

/// Generates the world into `out_dir` (created if needed): images first, each written
/// atomically, then the manifest, so a manifest never names a missing image. When the
/// folder held an earlier synthetic world (its manifest has this module's header), that
/// manifest is removed first, and that world's images past the new count once the new
/// manifest is written, so the folder holds one world; no other file is touched.
pub fn generate(out_dir: &Path, cfg: &SynthConfig) -> Result<SynthSummary> {
    if cfg.count == 0 || cfg.size < 64 {
        bail!(
            "nothing sensible to generate: count {} (at least 1), size {} (at least 64 px)",
            cfg.count,
            cfg.size
        );
    }
    let images_dir = out_dir.join("images");
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("cannot create {}", images_dir.display()))?;
    let path = out_dir.join("manifest.csv");
    let earlier_world =
        std::fs::read_to_string(&path).is_ok_and(|text| text.starts_with(&manifest_header()));
    if earlier_world {
        // Its images are about to be overwritten: a manifest left from it would name new
        // images with old labels if this generation stopped half way.
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    let stats = NihStats::embedded();
    let threads = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let next = AtomicUsize::new(0);
    let results: Vec<Result<Vec<(usize, String, Subject)>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= cfg.count {
                            return Ok(done);
                        }
                        let s = subject(&stats, cfg.seed, i);
                        let img = render::render(&s, cfg.size, cfg.seed.wrapping_add(i as u64));
                        let name = format!("images/{i:06}.png");
                        write_atomic(&out_dir.join(&name), &encode_png(&img)?)?;
                        done.push((i, name, s));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a generator thread panicked"))
            .collect()
    });
    let mut rows = Vec::with_capacity(cfg.count);
    for r in results {
        rows.extend(r?);
    }
    rows.sort_by_key(|(i, _, _)| *i);
    let mut manifest = manifest_header();
    let mut positives = [0usize; 14];
    for (i, name, s) in &rows {
        manifest.push_str(&manifest_row(name, s, *i));
        for (p, f) in positives.iter_mut().zip(s.findings) {
            *p += f as usize;
        }
    }
    write_atomic(&path, manifest.as_bytes())?;
    let removed = if earlier_world {
        remove_images_past(&images_dir, cfg.count)?
    } else {
        0
    };
    Ok(SynthSummary {
        manifest: path,
        images: rows.len(),
        positives,
        removed,
    })
}

/// Removes the generator's own images (`NNNNNN.png`, six digits) numbered `count` or more
/// from `images_dir`; returns how many.
fn remove_images_past(images_dir: &Path, count: usize) -> Result<usize> {
    let entries = std::fs::read_dir(images_dir)
        .with_context(|| format!("cannot list {}", images_dir.display()))?;
    let mut removed = 0;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", images_dir.display()))?
            .path();
        let index = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".png"))
            .filter(|stem| stem.len() == 6 && stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<usize>().ok());
        if index.is_some_and(|i| i >= count) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use world::label_index;

    fn mean_in(img: &GreyImage, u: (f32, f32), v: (f32, f32)) -> f32 {
        let (mut sum, mut n) = (0.0, 0);
        for y in 0..img.height {
            for x in 0..img.width {
                let (fu, fv) = (x as f32 / img.width as f32, y as f32 / img.height as f32);
                if (u.0..u.1).contains(&fu) && (v.0..v.1).contains(&fv) {
                    sum += img.get(x, y);
                    n += 1;
                }
            }
        }
        sum / n as f32
    }

    fn with(finding: &str) -> Subject {
        let mut s = Subject::healthy(60.0, Sex::Male, ViewPosition::Pa);
        s.findings[label_index("No Finding")] = false;
        s.findings[label_index(finding)] = true;
        s
    }

    fn difference(a: &GreyImage, b: &GreyImage) -> (f32, f32) {
        let diffs: Vec<f32> = a.pixels.iter().zip(&b.pixels).map(|(x, y)| y - x).collect();
        let mean = diffs.iter().map(|d| d.abs()).sum::<f32>() / diffs.len() as f32;
        let max = diffs.iter().fold(0.0f32, |m, d| m.max(d.abs()));
        (mean, max)
    }

    #[test]
    fn every_finding_changes_the_image_where_it_should() {
        let healthy = Subject::healthy(60.0, Sex::Male, ViewPosition::Pa);
        let base = render::render(&healthy, 256, 11);
        for finding in MIMIC_LABELS.iter().filter(|l| **l != "No Finding") {
            let img = render::render(&with(finding), 256, 11);
            let (mean, max) = difference(&base, &img);
            assert!(max > 0.08, "{finding}: largest change {max}");
            assert!(mean > 0.0001, "{finding}: mean change {mean}");
        }
        // Specific places: a big heart brightens the lower medial field on the patient's
        // left; effusion brightens a lung base; pneumothorax darkens a lung.
        let cardio = render::render(&with("Cardiomegaly"), 256, 11);
        assert!(
            mean_in(&cardio, (0.62, 0.72), (0.55, 0.68))
                > mean_in(&base, (0.62, 0.72), (0.55, 0.68)) + 0.05
        );
        let effusion = render::render(&with("Pleural Effusion"), 256, 11);
        let base_low = mean_in(&base, (0.15, 0.85), (0.6, 0.72));
        assert!(mean_in(&effusion, (0.15, 0.85), (0.6, 0.72)) > base_low + 0.02);
        let ptx = render::render(&with("Pneumothorax"), 256, 11);
        assert!(mean_in(&ptx, (0.15, 0.85), (0.2, 0.6)) < mean_in(&base, (0.15, 0.85), (0.2, 0.6)));
    }

    #[test]
    fn the_manifest_reads_back_through_the_manifest_adapter() {
        use crate::data::{LabelPolicy, OnBadRow, Split, manifest};
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            count: 20,
            size: 64,
            seed: 8,
            threads: 1,
        };
        let summary = generate(dir.path(), &cfg).unwrap();
        let data = manifest::load(&summary.manifest, OnBadRow::Fail).unwrap();
        assert_eq!(data.records.len(), 20);
        assert_eq!(data.label_names, MIMIC_LABELS.map(String::from).to_vec());
        assert_eq!(data.records_in(Split::Test).count(), 2);
        let stats = NihStats::embedded();
        for (i, record) in data.records.iter().enumerate() {
            let s = subject(&stats, cfg.seed, i);
            assert!(record.image.is_file(), "{}", record.image.display());
            assert_eq!(record.ehr.sex, Some(s.sex));
            assert_eq!(record.ehr.age, Some(s.age));
            assert_eq!(record.ehr.in_icu, Some(s.icu));
            let targets: Vec<bool> = record
                .targets(&LabelPolicy::default())
                .iter()
                .map(|t| *t == Some(1.0))
                .collect();
            assert_eq!(targets, s.findings.to_vec());
        }
        let all = cxr_msn::ehr::FeatureSet::from_name("all").unwrap();
        let items = data
            .items(None, Some(&all), &LabelPolicy::default())
            .unwrap();
        assert_eq!(items[0].ehr.len(), 13);
    }

    #[test]
    fn the_same_seed_gives_the_same_image_and_a_new_seed_another() {
        let s = Subject::healthy(40.0, Sex::Female, ViewPosition::Ap);
        assert_eq!(render::render(&s, 128, 3), render::render(&s, 128, 3));
        assert_ne!(render::render(&s, 128, 3), render::render(&s, 128, 4));
    }

    #[test]
    fn generate_writes_pngs_and_a_manifest_with_labels_and_ehr() {
        let dir = std::env::temp_dir().join(format!("cxr-msn-synth-{}", std::process::id()));
        let cfg = SynthConfig {
            count: 30,
            size: 96,
            seed: 5,
            threads: 2,
        };
        let summary = generate(&dir, &cfg).unwrap();
        assert_eq!(summary.images, 30);
        let text = std::fs::read_to_string(&summary.manifest).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 31);
        assert!(lines[0].starts_with("path,Atelectasis,Cardiomegaly,"));
        assert!(lines[0].ends_with(",sex,age,view,orientation,icu,mortality,split,patient_id"));
        let fields: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(fields.len(), 1 + 14 + 8);
        assert_eq!(fields[0], "images/000000.png");
        let png = std::fs::read(dir.join(fields[0])).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // Same seed, same files.
        let again = dir.join("again");
        generate(&again, &cfg).unwrap();
        assert_eq!(
            std::fs::read(again.join("manifest.csv")).unwrap(),
            text.as_bytes()
        );
        assert_eq!(std::fs::read(again.join(fields[0])).unwrap(), png);
        assert_eq!(summary.removed, 0);

        // A smaller world over it leaves no image of the larger one behind, and only the
        // generator's own files go.
        std::fs::write(again.join("images/mine.png"), b"kept").unwrap();
        std::fs::write(again.join("images/0000031.png"), b"kept").unwrap();
        let smaller = generate(&again, &SynthConfig { count: 12, ..cfg }).unwrap();
        assert_eq!((smaller.images, smaller.removed), (12, 18));
        let mut left: Vec<String> = std::fs::read_dir(again.join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), 14, "{left:?}");
        assert!(left.contains(&"000011.png".into()) && !left.contains(&"000012.png".into()));
        assert!(left.contains(&"mine.png".into()) && left.contains(&"0000031.png".into()));
        // A folder that held no synthetic world keeps every file.
        let other = dir.join("other");
        std::fs::create_dir_all(other.join("images")).unwrap();
        std::fs::write(other.join("images/000050.png"), b"theirs").unwrap();
        assert_eq!(
            generate(&other, &SynthConfig { count: 3, ..cfg })
                .unwrap()
                .removed,
            0
        );
        assert!(other.join("images/000050.png").exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
