//! `cxr-msn embed`: a 2-D map of the encoder's embedding space and numbers for how well it
//! separates findings and EHR groups (the paper only showed t-SNE pictures; its open
//! question asks for quantities).
//!
//! The map is the projection on the first two principal components of the [CLS] embeddings
//! (deterministic, reproducible). Cluster quality is the mean silhouette, computed in the
//! full embedding space with Euclidean distances (scikit-learn's `silhouette_score`), for
//! each label (positive vs negative) and each EHR field present (sex, view, ...).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use cxr_msn::ehr::Sex;
use cxr_msn::prototype_head::encoder_signature;
use serde::Serialize;

use crate::data::{Record, Split};
use crate::device::{DeviceArg, choose};
use crate::features::cls_features;
use crate::files::write_atomic;

use crate::model_files;
use crate::plot::{Frame, scatter};
use crate::report::stack;
use crate::source::DataArgs;

/// Mean silhouette of `points` (`n` rows of `d` values) grouped by `groups`; `None` with
/// fewer than two groups. A point alone in its group scores 0, as in scikit-learn.
pub fn silhouette(points: &[f32], d: usize, groups: &[usize]) -> Option<f64> {
    let n = groups.len();
    let k = groups.iter().max().map_or(0, |m| m + 1);
    let mut sizes = vec![0usize; k];
    for &g in groups {
        sizes[g] += 1;
    }
    if sizes.iter().filter(|&&s| s > 0).count() < 2 {
        return None;
    }
    let row = |i: usize| &points[i * d..(i + 1) * d];
    let mut total = 0.0;
    let mut sums = vec![0.0f64; k];
    for i in 0..n {
        sums.iter_mut().for_each(|s| *s = 0.0);
        for j in 0..n {
            if i != j {
                let dist: f64 = row(i)
                    .iter()
                    .zip(row(j))
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                sums[groups[j]] += dist;
            }
        }
        let own = groups[i];
        if sizes[own] <= 1 {
            continue;
        }
        let a = sums[own] / (sizes[own] - 1) as f64;
        let b = (0..k)
            .filter(|&g| g != own && sizes[g] > 0)
            .map(|g| sums[g] / sizes[g] as f64)
            .fold(f64::INFINITY, f64::min);
        total += (b - a) / a.max(b);
    }
    Some(total / n as f64)
}

/// The first two principal components of a set of embeddings and the map they give.
#[derive(Debug, Clone)]
pub struct Pca2 {
    /// Mean of the rows, `[d]`.
    pub mean: Vec<f64>,
    /// The two unit directions of largest spread, `[2][d]`.
    pub components: [Vec<f64>; 2],
    /// Share of the total variance along each direction.
    pub explained: [f64; 2],
    /// Each row's map position: its centred projection on the two directions, `[n][2]`.
    pub coords: Vec<[f64; 2]>,
}

impl Pca2 {
    /// The map position of a new embedding `[d]`.
    pub fn project(&self, row: &[f32]) -> [f64; 2] {
        let centred: Vec<f64> = row
            .iter()
            .zip(&self.mean)
            .map(|(v, m)| *v as f64 - m)
            .collect();
        [
            dot(&centred, &self.components[0]),
            dot(&centred, &self.components[1]),
        ]
    }
}

/// The first two principal components of `points` (`n` rows of `d` values) by power
/// iteration with deflation from a fixed start, and the rows' map positions.
pub fn pca_2d(points: &[f32], d: usize) -> Pca2 {
    let n = points.len() / d;
    let mean: Vec<f64> = (0..d)
        .map(|c| (0..n).map(|r| points[r * d + c] as f64).sum::<f64>() / n.max(1) as f64)
        .collect();
    let x: Vec<Vec<f64>> = (0..n)
        .map(|r| (0..d).map(|c| points[r * d + c] as f64 - mean[c]).collect())
        .collect();
    let mut components: Vec<Vec<f64>> = Vec::new();
    for k in 0..2 {
        let mut v: Vec<f64> = (0..d).map(|c| 1.0 + (c * 7 + k * 3) as f64 % 5.0).collect();
        for _ in 0..200 {
            // w = X^T X v, minus what earlier components explain.
            let proj: Vec<f64> = x.iter().map(|row| dot(row, &v)).collect();
            let mut w = vec![0.0; d];
            for (row, p) in x.iter().zip(&proj) {
                for (wc, xc) in w.iter_mut().zip(row) {
                    *wc += xc * p;
                }
            }
            for c in &components {
                let overlap = dot(&w, c);
                w.iter_mut().zip(c).for_each(|(wc, cc)| *wc -= overlap * cc);
            }
            let norm = dot(&w, &w).sqrt();
            if norm < 1e-12 {
                break;
            }
            v = w.into_iter().map(|wc| wc / norm).collect();
        }
        components.push(v);
    }
    let coords: Vec<[f64; 2]> = x
        .iter()
        .map(|row| [dot(row, &components[0]), dot(row, &components[1])])
        .collect();
    let total: f64 = x.iter().map(|row| dot(row, row)).sum();
    let share = |k: usize| {
        if total > 0.0 {
            coords.iter().map(|c| c[k] * c[k]).sum::<f64>() / total
        } else {
            0.0
        }
    };
    let explained = [share(0), share(1)];
    let second = components.pop().unwrap_or_default();
    let first = components.pop().unwrap_or_default();
    Pca2 {
        mean,
        components: [first, second],
        explained,
        coords,
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The settings of `cxr-msn embed`.
#[derive(Args, Debug, Clone)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub source: DataArgs,
    /// A pretraining checkpoint or a classifier model file; its encoder is used.
    #[arg(long)]
    pub model: PathBuf,
    /// Split to embed: train, validate, test, or all.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Output folder: embedding_map.csv, embedding_map.svg, clusters.json and
    /// embedding_map.json (the map the page's learn mode draws; copy it beside the page's
    /// model file as embedding-map.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Loader threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where the encoder runs: a hardware GPU through wgpu when there is one (auto), the
    /// CPU, or the wgpu adapter whatever it is (gpu).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
}

/// Runs the embedding map; returns the report printed by the command.
pub fn run(args: &EmbedArgs) -> Result<String> {
    let device = choose(args.device)?.device;
    let (vit, meta) = model_files::encoder(&args.model, &device)?;
    let data = args.source.load()?;
    let split = match args.split.as_str() {
        "all" => None,
        s => Some(Split::parse(s).with_context(|| format!("unknown split '{s}'"))?),
    };
    let records: Vec<&Record> = data
        .records
        .iter()
        .filter(|r| split.is_none() || r.split == split)
        .collect();
    if records.len() < 3 {
        bail!("{} images are too few for a map", records.len());
    }
    let items = data.items(split, None, &args.source.policy())?;
    let points = cls_features(&vit, items, &meta.normalization, args.threads, &device)?;
    let d = vit.dim();
    let pca = pca_2d(&points, d);
    let map = &pca.coords;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    // Groupings: each label (positive vs not) and each EHR field with values.
    let policy = args.source.policy();
    let mut groupings: BTreeMap<String, Vec<Option<usize>>> = BTreeMap::new();
    for (l, name) in data.label_names.iter().enumerate() {
        groupings.insert(
            format!("label:{name}"),
            records
                .iter()
                .map(|r| r.labels[l].value(&policy).map(|v| (v > 0.5) as usize))
                .collect(),
        );
    }
    let field =
        |f: &dyn Fn(&Record) -> Option<usize>| records.iter().map(|r| f(r)).collect::<Vec<_>>();
    groupings.insert("ehr:sex".into(), field(&|r| r.ehr.sex.map(|s| s as usize)));
    groupings.insert(
        "ehr:view".into(),
        field(&|r| r.ehr.view.map(|v| v as usize)),
    );
    groupings.insert("ehr:icu".into(), field(&|r| r.ehr.in_icu.map(usize::from)));
    groupings.insert(
        "ehr:age_over_60".into(),
        field(&|r| r.ehr.age.map(|a| (a > 60.0) as usize)),
    );

    let mut report = format!(
        "{} images, embedding width {d}; silhouette (higher separates better):\n",
        records.len()
    );
    let mut clusters = serde_json::Map::new();
    for (name, groups) in &groupings {
        let keep: Vec<usize> = (0..records.len())
            .filter(|&i| groups[i].is_some())
            .collect();
        let pts: Vec<f32> = keep
            .iter()
            .flat_map(|&i| points[i * d..(i + 1) * d].iter().copied())
            .collect();
        let g: Vec<usize> = keep.iter().map(|&i| groups[i].unwrap_or(0)).collect();
        let s = silhouette(&pts, d, &g);
        if let Some(s) = s {
            let _ = writeln!(report, "  {name:34} {s:+.4} ({} images)", keep.len());
        }
        clusters.insert(name.clone(), serde_json::json!(s));
    }
    let mut csv = String::from("path,x,y");
    for name in &data.label_names {
        let _ = write!(csv, ",{name}");
    }
    csv.push_str(",sex,age,view\n");
    for (r, xy) in records.iter().zip(map) {
        let _ = write!(csv, "{},{},{}", r.image.display(), xy[0], xy[1]);
        for l in &r.labels {
            let _ = write!(
                csv,
                ",{}",
                l.value(&policy).map_or(String::new(), |v| v.to_string())
            );
        }
        let _ = writeln!(
            csv,
            ",{},{},{}",
            r.ehr.sex.map_or("", sex_code),
            r.ehr.age.map_or(String::new(), |a| a.to_string()),
            r.ehr
                .view
                .map_or(String::new(), |v| format!("{v:?}").to_uppercase())
        );
    }
    write_atomic(&args.out.join("embedding_map.csv"), csv.as_bytes())?;
    write_atomic(
        &args.out.join("clusters.json"),
        serde_json::to_string_pretty(&clusters)?.as_bytes(),
    )?;
    let signature = encoder_signature(
        &vit,
        meta.config.vit.image_size,
        &meta.normalization,
        &device,
    )
    .map_err(anyhow::Error::msg)?
    .into_data()
    .convert::<f32>()
    .try_to_vec::<f32>()
    .map_err(|e| anyhow::anyhow!("reading the signature back: {e:?}"))?;
    let page = PageMap {
        version: 1,
        dim: d,
        signature,
        mean: pca.mean.iter().map(|&v| v as f32).collect(),
        components: pca
            .components
            .iter()
            .map(|c| c.iter().map(|&v| v as f32).collect())
            .collect(),
        explained: pca.explained,
        label_names: data.label_names.clone(),
        source: format!(
            "{} images of the {} split of {}",
            records.len(),
            args.split,
            args.source.data.display()
        ),
        points: records
            .iter()
            .zip(map)
            .map(|(r, xy)| PagePoint {
                x: xy[0] as f32,
                y: xy[1] as f32,
                labels: r
                    .labels
                    .iter()
                    .map(|l| l.value(&policy).map(|v| (v > 0.5) as u8))
                    .collect(),
                sex: r.ehr.sex.map(|s| sex_code(s).to_string()),
                age: r.ehr.age,
                view: r.ehr.view.map(|v| format!("{v:?}").to_uppercase()),
            })
            .collect(),
    };
    write_atomic(
        &args.out.join("embedding_map.json"),
        serde_json::to_string(&page)?.as_bytes(),
    )?;
    write_atomic(
        &args.out.join("embedding_map.svg"),
        map_svg(map, &groupings, &data.label_names).as_bytes(),
    )?;
    let _ = writeln!(
        report,
        "wrote {} (embedding_map.csv, embedding_map.svg, clusters.json, and embedding_map.json \
         for the page's learn mode)",
        args.out.display()
    );
    Ok(report)
}

/// `M` or `F`, as the page and the CSV write sex.
fn sex_code(sex: Sex) -> &'static str {
    if sex == Sex::Male { "M" } else { "F" }
}

/// The embedding map as the page's learn mode reads it (`embedding_map.json`): the PCA
/// basis, so the page can place new images, and the mapped images with their labels and
/// EHR. `signature` is the encoder's [CLS] of `cxr_msn::prototype_head::reference_image`,
/// which the page compares with its own model's before drawing.
#[derive(Debug, Serialize)]
struct PageMap {
    version: u32,
    dim: usize,
    signature: Vec<f32>,
    mean: Vec<f32>,
    components: Vec<Vec<f32>>,
    explained: [f64; 2],
    label_names: Vec<String>,
    source: String,
    points: Vec<PagePoint>,
}

/// One mapped image: position, labels (1, 0 or unknown, in `label_names` order) and EHR.
#[derive(Debug, Serialize)]
struct PagePoint {
    x: f32,
    y: f32,
    labels: Vec<Option<u8>>,
    sex: Option<String>,
    age: Option<f32>,
    view: Option<String>,
}

/// The map drawn three times: coloured by the first label with both classes ("No Finding"
/// when the dataset has it), by sex and by view; points without a value are grey.
fn map_svg(
    map: &[[f64; 2]],
    groupings: &BTreeMap<String, Vec<Option<usize>>>,
    label_names: &[String],
) -> String {
    let has_both = |g: &[Option<usize>]| g.contains(&Some(0)) && g.contains(&Some(1));
    let label = label_names
        .iter()
        .map(|n| format!("label:{n}"))
        .filter(|k| groupings.get(k).is_some_and(|g| has_both(g)))
        .max_by_key(|k| k.as_str() == "label:No Finding");
    let mut charts = Vec::new();
    let panels = [
        (label.clone(), vec!["negative", "positive"]),
        (Some("ehr:sex".to_string()), vec!["M", "F"]),
        (
            Some("ehr:view".to_string()),
            vec!["PA", "lateral", "AP", "LL"],
        ),
    ];
    for (key, names) in panels {
        let Some(key) = key else { continue };
        let Some(groups) = groupings.get(&key) else {
            continue;
        };
        let unknown = names.len();
        let colours: Vec<usize> = groups.iter().map(|g| g.unwrap_or(unknown)).collect();
        let mut legend: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        legend.push("unknown".into());
        charts.push(scatter(
            &Frame {
                title: format!("embedding map (PCA), coloured by {key}"),
                x_label: "PC 1".into(),
                y_label: "PC 2".into(),
                ..Frame::default()
            },
            map,
            &colours,
            &legend,
        ));
    }
    stack(&charts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Case {
        points: Vec<Vec<f64>>,
        groups: Vec<usize>,
        silhouette: f64,
    }

    #[test]
    fn silhouette_matches_scikit_learn() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/metrics/silhouette.json"),
        )
        .unwrap();
        let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
        for case in cases {
            let d = case.points[0].len();
            let pts: Vec<f32> = case.points.iter().flatten().map(|&v| v as f32).collect();
            let s = silhouette(&pts, d, &case.groups).unwrap();
            assert!(
                (s - case.silhouette).abs() < 1e-6,
                "{s} vs {}",
                case.silhouette
            );
        }
        assert_eq!(silhouette(&[0.0, 1.0], 1, &[0, 0]), None, "one group");
    }

    #[test]
    fn pca_finds_the_direction_of_largest_spread() {
        // Points along (1, 1, 0) with a little noise along (1, -1, 0).
        let mut pts = Vec::new();
        for i in 0..20 {
            let t = i as f32 - 10.0;
            let e = if i % 2 == 0 { 0.1 } else { -0.1 };
            pts.extend([t + e, t - e, 0.0]);
        }
        let pca = pca_2d(&pts, 3);
        let map = &pca.coords;
        let spread = |k: usize| map.iter().map(|p| p[k] * p[k]).sum::<f64>();
        assert!(spread(0) > 100.0 * spread(1));
        // Point 0 sits 9.5 below the mean along (1, 1)/sqrt(2).
        assert!(
            (map[0][0].abs() - 2.0f64.sqrt() * 9.5).abs() < 0.05,
            "{}",
            map[0][0]
        );
        // Variance shares by hand: 2 t'^2 along (1, 1) with t' = t + 0.5, and 2 * 0.1^2
        // per point along (1, -1).
        let along: f64 = (0..20).map(|i| 2.0 * (i as f64 - 9.5).powi(2)).sum();
        let across = 20.0 * 2.0 * 0.01;
        let want = [along / (along + across), across / (along + across)];
        for (got, want) in pca.explained.iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "{:?}", pca.explained);
        }
        // A new embedding lands where the map put the same values.
        let again = pca.project(&pts[3..6]);
        assert!((again[0] - map[1][0]).abs() < 1e-6 && (again[1] - map[1][1]).abs() < 1e-6);
    }
}
