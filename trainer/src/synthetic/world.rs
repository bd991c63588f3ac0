//! Who the synthetic patients are: EHR fields and findings drawn from the real NIH
//! ChestX-ray14 statistics (`nih_stats.json`, see `trainer/data/make_nih_stats.py`), with
//! the fields NIH lacks (ICU, orientation, mortality, support devices, fracture, enlarged
//! cardiomediastinum) added by documented assumptions that tie them to the rest the way
//! clinical data is tied.

use cxr_msn::ehr::{Orientation, Sex, ViewPosition};
use cxr_msn::labels::MIMIC_LABELS;
use cxr_msn::rand::{Rng, RngExt};
use serde::Deserialize;

/// The NIH statistics, embedded at build time.
const NIH_STATS: &str = include_str!("nih_stats.json");

/// Index of a MIMIC label by name (the labels are a fixed, known list).
pub fn label_index(name: &str) -> usize {
    MIMIC_LABELS
        .iter()
        .position(|l| *l == name)
        .unwrap_or_else(|| panic!("'{name}' is not a MIMIC label"))
}

/// Image and finding counts per (age decade, sex, view) cell of the real NIH table.
#[derive(Debug, Clone, Deserialize)]
pub struct NihStats {
    /// NIH finding names, the order of the per-cell counts.
    pub findings: Vec<String>,
    /// `[age_decade, sex (0 = M, 1 = F), view (0 = PA, 1 = AP), images, finding counts...]`.
    pub cells: Vec<Vec<u32>>,
}

impl NihStats {
    /// The embedded statistics.
    pub fn embedded() -> Self {
        serde_json::from_str(NIH_STATS).expect("the embedded NIH statistics parse")
    }

    fn total(&self) -> u32 {
        self.cells.iter().map(|c| c[3]).sum()
    }

    fn finding(&self, name: &str) -> usize {
        self.findings
            .iter()
            .position(|f| f == name)
            .unwrap_or_else(|| panic!("NIH statistics lack '{name}'"))
    }

    /// P(finding | cell), shrunk toward the finding's overall rate by `PRIOR` pseudo-images
    /// so that sparse cells (e.g. 90+ year olds) stay sensible.
    fn rate(&self, cell: &[u32], finding: usize) -> f64 {
        const PRIOR: f64 = 20.0;
        let overall =
            self.cells.iter().map(|c| c[4 + finding]).sum::<u32>() as f64 / self.total() as f64;
        (cell[4 + finding] as f64 + PRIOR * overall) / (cell[3] as f64 + PRIOR)
    }
}

/// One synthetic patient at the time of the scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// Age in years.
    pub age: f32,
    /// Sex.
    pub sex: Sex,
    /// PA or AP (frontal views only).
    pub view: ViewPosition,
    /// Erect or recumbent.
    pub orientation: Orientation,
    /// In an ICU stay.
    pub icu: bool,
    /// Died during the admission.
    pub died: bool,
    /// Findings in the MIMIC label order.
    pub findings: [bool; 14],
}

impl Subject {
    /// Whether a MIMIC finding is present.
    pub fn has(&self, name: &str) -> bool {
        self.findings[label_index(name)]
    }

    /// A healthy adult, for tests that add one finding at a time.
    #[cfg(test)]
    pub fn healthy(age: f32, sex: Sex, view: ViewPosition) -> Self {
        let mut findings = [false; 14];
        findings[label_index("No Finding")] = true;
        Self {
            age,
            sex,
            view,
            orientation: Orientation::Erect,
            icu: false,
            died: false,
            findings,
        }
    }
}

/// Assumptions for what NIH does not record (documented in the README's synthetic-data
/// section; change them here).
pub mod assumptions {
    /// P(ICU | AP view): portable AP films are mostly bedside films.
    pub const ICU_GIVEN_AP: f64 = 0.45;
    /// P(ICU | PA view).
    pub const ICU_GIVEN_PA: f64 = 0.03;
    /// P(recumbent | AP, ICU) and P(recumbent | AP, not ICU); PA films are taken erect.
    pub const RECUMBENT_GIVEN_AP_ICU: f64 = 0.9;
    /// See [`RECUMBENT_GIVEN_AP_ICU`].
    pub const RECUMBENT_GIVEN_AP: f64 = 0.5;
    /// P(support devices) in ICU, on other AP films, on PA films.
    pub const DEVICES: [f64; 3] = [0.75, 0.25, 0.03];
    /// P(enlarged cardiomediastinum | cardiomegaly) and otherwise.
    pub const ENLARGED_CM: [f64; 2] = [0.3, 0.02];
    /// P(fracture) = base + per year of age.
    pub const FRACTURE: (f64, f64) = (0.01, 0.0003);
    /// Mortality: logit = intercept + age slope x (age - 60) + ICU + per finding weights.
    pub const MORTALITY_INTERCEPT: f64 = -4.0;
    /// See [`MORTALITY_INTERCEPT`].
    pub const MORTALITY_AGE: f64 = 0.035;
    /// See [`MORTALITY_INTERCEPT`].
    pub const MORTALITY_ICU: f64 = 1.6;
    /// See [`MORTALITY_INTERCEPT`]: edema, effusion, consolidation or pneumonia, pneumothorax.
    pub const MORTALITY_FINDINGS: [f64; 4] = [0.6, 0.5, 0.5, 0.4];
}

/// Draws one subject.
pub fn sample_subject(stats: &NihStats, rng: &mut impl Rng) -> Subject {
    use assumptions::*;
    // (age decade, sex, view) from the real joint distribution.
    let mut pick = rng.random_range(0..stats.total());
    let cell = stats
        .cells
        .iter()
        .find(|c| {
            if pick < c[3] {
                true
            } else {
                pick -= c[3];
                false
            }
        })
        .expect("the pick falls in a cell");
    let decade = cell[0] as f32;
    let age = if cell[0] >= 9 {
        90.0 + rng.random_range(0.0..6.0f32)
    } else {
        decade * 10.0 + rng.random_range(0.0..10.0f32)
    }
    .floor();
    let sex = if cell[1] == 0 { Sex::Male } else { Sex::Female };
    let view = if cell[2] == 0 {
        ViewPosition::Pa
    } else {
        ViewPosition::Ap
    };
    let ap = view == ViewPosition::Ap;
    let icu = rng.random_bool(if ap { ICU_GIVEN_AP } else { ICU_GIVEN_PA });
    let recumbent = ap
        && rng.random_bool(if icu {
            RECUMBENT_GIVEN_AP_ICU
        } else {
            RECUMBENT_GIVEN_AP
        });
    let orientation = if recumbent {
        Orientation::Recumbent
    } else {
        Orientation::Erect
    };

    let mut nih = |name: &str| rng.random_bool(stats.rate(cell, stats.finding(name)).min(0.95));
    let atelectasis = nih("Atelectasis");
    let cardiomegaly = nih("Cardiomegaly");
    let effusion = nih("Effusion");
    let infiltration = nih("Infiltration");
    let lesion = nih("Mass") | nih("Nodule");
    let pneumonia = nih("Pneumonia");
    let pneumothorax = nih("Pneumothorax");
    let consolidation = nih("Consolidation");
    let edema = nih("Edema");
    let pleural_other = nih("Pleural_Thickening");

    let mut f = [false; 14];
    let mut set = |name: &str, value: bool| f[label_index(name)] = value;
    set("Atelectasis", atelectasis);
    set("Cardiomegaly", cardiomegaly);
    set("Pleural Effusion", effusion);
    set("Lung Lesion", lesion);
    set("Pneumonia", pneumonia);
    set("Pneumothorax", pneumothorax);
    set("Consolidation", consolidation);
    set("Edema", edema);
    set("Pleural Other", pleural_other);
    let airspace = consolidation || pneumonia || edema || atelectasis;
    set(
        "Lung Opacity",
        infiltration || (airspace && rng.random_bool(0.5)),
    );
    set(
        "Enlarged Cardiomediastinum",
        rng.random_bool(ENLARGED_CM[if cardiomegaly { 0 } else { 1 }]),
    );
    set(
        "Fracture",
        rng.random_bool((FRACTURE.0 + FRACTURE.1 * age as f64).min(0.5)),
    );
    let devices = DEVICES[if icu {
        0
    } else if ap {
        1
    } else {
        2
    }];
    set("Support Devices", rng.random_bool(devices));
    let any = f.iter().any(|&x| x);
    f[label_index("No Finding")] = !any;

    let has = |name: &str| f[label_index(name)] as u8 as f64;
    let [w_edema, w_effusion, w_airspace, w_ptx] = MORTALITY_FINDINGS;
    let logit = MORTALITY_INTERCEPT
        + MORTALITY_AGE * (age as f64 - 60.0)
        + MORTALITY_ICU * icu as u8 as f64
        + w_edema * has("Edema")
        + w_effusion * has("Pleural Effusion")
        + w_airspace * (has("Consolidation").max(has("Pneumonia")))
        + w_ptx * has("Pneumothorax");
    let died = rng.random_bool(1.0 / (1.0 + (-logit).exp()));

    Subject {
        age,
        sex,
        view,
        orientation,
        icu,
        died,
        findings: f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxr_msn::rand::SeedableRng;
    use cxr_msn::rand::rngs::StdRng;

    #[test]
    fn subjects_follow_the_nih_marginals_and_the_assumed_couplings() {
        let stats = NihStats::embedded();
        let mut rng = StdRng::seed_from_u64(1);
        let n = 20_000;
        let subjects: Vec<Subject> = (0..n).map(|_| sample_subject(&stats, &mut rng)).collect();
        let frac = |pred: &dyn Fn(&Subject) -> bool| {
            subjects.iter().filter(|s| pred(s)).count() as f64 / n as f64
        };
        // Facts measured on the NIH table (../shared/data/README.md): male 56.5%, PA 60%,
        // mean age 46.6.
        assert!((frac(&|s| s.sex == Sex::Male) - 0.565).abs() < 0.015);
        assert!((frac(&|s| s.view == ViewPosition::Pa) - 0.60).abs() < 0.015);
        let mean_age = subjects.iter().map(|s| s.age as f64).sum::<f64>() / n as f64;
        assert!((mean_age - 46.6).abs() < 1.0, "mean age {mean_age}");
        // NIH prevalences (112,120 images): Cardiomegaly 2,776 (2.5%), Effusion 13,317 (11.9%).
        assert!((frac(&|s| s.has("Cardiomegaly")) - 0.0248).abs() < 0.006);
        assert!((frac(&|s| s.has("Pleural Effusion")) - 0.119).abs() < 0.012);
        // Couplings: ICU mostly on AP films; devices follow ICU; mortality rises with ICU.
        let icu_ap =
            frac(&|s| s.icu && s.view == ViewPosition::Ap) / frac(&|s| s.view == ViewPosition::Ap);
        assert!((icu_ap - assumptions::ICU_GIVEN_AP).abs() < 0.03);
        let dev_icu = frac(&|s| s.icu && s.has("Support Devices")) / frac(&|s| s.icu);
        assert!((dev_icu - 0.75).abs() < 0.04);
        let died_icu = frac(&|s| s.icu && s.died) / frac(&|s| s.icu);
        let died_ward = frac(&|s| !s.icu && s.died) / frac(&|s| !s.icu);
        assert!(died_icu > 2.0 * died_ward, "{died_icu} vs {died_ward}");
        // No Finding is exactly the absence of the other 13.
        for s in &subjects {
            let others = s
                .findings
                .iter()
                .enumerate()
                .any(|(i, &x)| x && i != label_index("No Finding"));
            assert_eq!(s.has("No Finding"), !others);
            assert!(s.view == ViewPosition::Ap || s.orientation == Orientation::Erect);
        }
    }

    #[test]
    fn ehr_carries_signal_about_findings() {
        // Effusion is far more common on AP films in NIH; the world keeps that.
        let stats = NihStats::embedded();
        let mut rng = StdRng::seed_from_u64(2);
        let subjects: Vec<Subject> = (0..20_000)
            .map(|_| sample_subject(&stats, &mut rng))
            .collect();
        let rate = |view| {
            let group: Vec<_> = subjects.iter().filter(|s| s.view == view).collect();
            group.iter().filter(|s| s.has("Pleural Effusion")).count() as f64 / group.len() as f64
        };
        assert!(rate(ViewPosition::Ap) > 1.3 * rate(ViewPosition::Pa));
    }
}
