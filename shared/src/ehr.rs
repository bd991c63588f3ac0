//! EHR variables and their encoding into the vector the anchor branch sees
//! (METHOD.md section 5).
//!
//! A [`FeatureSet`] is an ordered list of [`EhrField`]s. The paper compares 23 named sets
//! ([`FeatureSet::NAMED`]): the 8 single variables, the 5 single groups, 7 combinations of
//! groups and "all" with each of the three age encodings. Any `+`-joined list of fields
//! and groups is accepted too (for example `sex+view`). Whatever the spelling, the
//! columns come out in one canonical order: sex, age, view, orientation, mortality, ICU.

use serde::{Deserialize, Serialize};

use crate::error::EhrError;

/// Right edges of the 5-year age bins: (-inf, 20], (20, 25], ..., (85, 90], (90, inf).
const AGE5_EDGES: [f32; 15] = [
    20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0,
];
/// Right edges of the 10-year age bins: (-inf, 20], (20, 30], ..., (80, 90], (90, inf).
const AGE10_EDGES: [f32; 8] = [20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0];
/// `age_norm = (age - AGE_MIN) / (AGE_MAX - AGE_MIN)`.
const AGE_MIN: f32 = 16.0;
const AGE_MAX: f32 = 100.0;

/// One encoded EHR variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EhrField {
    /// Two columns: male, female.
    Sex,
    /// One column: (age - 16) / (100 - 16).
    AgeNorm,
    /// 16 one-hot 5-year bins, right-closed: <=20, (20,25], ..., (85,90], >90.
    Age5,
    /// 9 one-hot 10-year bins, right-closed: <=20, (20,30], ..., (80,90], >90.
    Age10,
    /// Four columns in the order PA, LATERAL, AP, LL.
    View,
    /// Two columns: Erect, Recumbent.
    Orientation,
    /// In-hospital mortality of the containing admission, two columns: alive, died.
    Mortality,
    /// Currently in an ICU stay, two columns: icu, not_icu.
    Icu,
}

impl EhrField {
    /// Every field, in canonical column order.
    pub const ALL: [EhrField; 8] = [
        Self::Sex,
        Self::AgeNorm,
        Self::Age5,
        Self::Age10,
        Self::View,
        Self::Orientation,
        Self::Mortality,
        Self::Icu,
    ];

    /// The name used in feature-set names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sex => "sex",
            Self::AgeNorm => "age",
            Self::Age5 => "age5",
            Self::Age10 => "age10",
            Self::View => "view",
            Self::Orientation => "orientation",
            Self::Mortality => "mortality",
            Self::Icu => "icu",
        }
    }

    /// Number of columns this field encodes to.
    pub fn width(self) -> usize {
        match self {
            Self::Sex => 2,
            Self::AgeNorm => 1,
            Self::Age5 => AGE5_EDGES.len() + 1,
            Self::Age10 => AGE10_EDGES.len() + 1,
            Self::View => 4,
            Self::Orientation | Self::Mortality | Self::Icu => 2,
        }
    }

    /// Column names, in encoding order.
    pub fn columns(self) -> Vec<String> {
        let bins = |edges: &[f32]| {
            let mut names = vec![format!("age_le{}", edges[0])];
            names.extend(edges.windows(2).map(|w| format!("age_{}_{}", w[0], w[1])));
            names.push(format!("age_gt{}", edges[edges.len() - 1]));
            names
        };
        let fixed = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        match self {
            Self::Sex => fixed(&["male", "female"]),
            Self::AgeNorm => fixed(&["age_norm"]),
            Self::Age5 => bins(&AGE5_EDGES),
            Self::Age10 => bins(&AGE10_EDGES),
            Self::View => fixed(&["PA", "LATERAL", "AP", "LL"]),
            Self::Orientation => fixed(&["Erect", "Recumbent"]),
            Self::Mortality => fixed(&["alive", "died"]),
            Self::Icu => fixed(&["icu", "not_icu"]),
        }
    }

    /// How this field's columns encode a record, in words: for readers of a model outside
    /// cxr-msn (the ONNX export's metadata).
    pub fn encoding(self) -> String {
        let bins = |edges: &[f32]| {
            format!(
                "{}: one-hot of the age bin in years, an age on an edge in the bin below it \
                 (edges {edges:?})",
                self.columns().join(", ")
            )
        };
        match self {
            Self::Sex => "male, female: one-hot of the patient's sex".into(),
            Self::AgeNorm => format!(
                "age_norm: (age in years - {AGE_MIN}) / ({AGE_MAX} - {AGE_MIN}), not clipped"
            ),
            Self::Age5 => bins(&AGE5_EDGES),
            Self::Age10 => bins(&AGE10_EDGES),
            Self::View => "PA, LATERAL, AP, LL: one-hot of the view position".into(),
            Self::Orientation => "Erect, Recumbent: one-hot of the patient's orientation".into(),
            Self::Mortality => "alive, died: one-hot of death in hospital".into(),
            Self::Icu => "icu, not_icu: one-hot of an ICU stay".into(),
        }
    }

    fn is_age(self) -> bool {
        matches!(self, Self::AgeNorm | Self::Age5 | Self::Age10)
    }
}

/// Sex as recorded in MIMIC-IV `patients.gender` (M / F).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sex {
    /// M
    Male,
    /// F
    Female,
}

impl Sex {
    /// Accepts M, F, Male, Female in any case.
    pub fn parse(value: &str) -> Result<Self, EhrError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "m" | "male" => Ok(Self::Male),
            "f" | "female" => Ok(Self::Female),
            _ => Err(EhrError::UnknownValue {
                field: "sex",
                value: value.to_string(),
                expected: "M, F, Male, Female",
            }),
        }
    }
}

/// View position of the scan (DICOM ViewPosition), the four kept by the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViewPosition {
    /// Posterior-anterior.
    Pa,
    /// Lateral.
    Lateral,
    /// Anterior-posterior.
    Ap,
    /// Left lateral.
    Ll,
}

impl ViewPosition {
    /// Accepts PA, LATERAL (or LAT), AP, LL in any case.
    pub fn parse(value: &str) -> Result<Self, EhrError> {
        match value.trim().to_ascii_uppercase().as_str() {
            "PA" => Ok(Self::Pa),
            "LATERAL" | "LAT" => Ok(Self::Lateral),
            "AP" => Ok(Self::Ap),
            "LL" => Ok(Self::Ll),
            _ => Err(EhrError::UnknownValue {
                field: "view",
                value: value.to_string(),
                expected: "PA, LATERAL, AP, LL",
            }),
        }
    }
}

/// Patient orientation during the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Orientation {
    /// Standing or sitting.
    Erect,
    /// Lying down.
    Recumbent,
}

impl Orientation {
    /// Accepts Erect and Recumbent in any case.
    pub fn parse(value: &str) -> Result<Self, EhrError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "erect" => Ok(Self::Erect),
            "recumbent" => Ok(Self::Recumbent),
            _ => Err(EhrError::UnknownValue {
                field: "orientation",
                value: value.to_string(),
                expected: "Erect, Recumbent",
            }),
        }
    }
}

/// The EHR facts about one image. Fields a feature set does not use may be missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EhrRecord {
    /// Patient sex.
    pub sex: Option<Sex>,
    /// Age in years at the time of the scan.
    pub age: Option<f32>,
    /// View position.
    pub view: Option<ViewPosition>,
    /// Patient orientation.
    pub orientation: Option<Orientation>,
    /// The patient died during the admission that contains the scan.
    pub died_in_hospital: Option<bool>,
    /// The scan was taken during an ICU stay.
    pub in_icu: Option<bool>,
}

/// An ordered set of EHR fields; see the module docs. Serialised as its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FeatureSet {
    name: String,
    fields: Vec<EhrField>,
}

impl FeatureSet {
    /// The 23 feature sets compared in the paper: 8 single variables, 5 single groups,
    /// 7 combinations of groups, and all variables with each age encoding.
    pub const NAMED: [&'static str; 23] = [
        "sex",
        "age",
        "age5",
        "age10",
        "view",
        "orientation",
        "mortality",
        "icu",
        "demographic",
        "demographic-age5",
        "demographic-age10",
        "scan",
        "inpatient",
        "demographic+scan",
        "demographic-age5+scan",
        "demographic-age10+scan",
        "demographic+inpatient",
        "demographic-age5+inpatient",
        "demographic-age10+inpatient",
        "scan+inpatient",
        "all",
        "all-age5",
        "all-age10",
    ];

    /// Parses a name: one of [`Self::NAMED`], or fields and groups joined by `+`.
    pub fn from_name(name: &str) -> Result<Self, EhrError> {
        let name = name.trim();
        let mut fields = Vec::new();
        for part in name.split('+') {
            let part = part.trim();
            let expanded = expand_part(part).ok_or_else(|| EhrError::UnknownFeatureSet {
                name: name.to_string(),
                part: part.to_string(),
                fields: EhrField::ALL.map(EhrField::name).join(", ")
                    + ", demographic[-age5|-age10], scan, inpatient, all[-age5|-age10]",
            })?;
            fields.extend(expanded);
        }
        fields.sort();
        let before = fields.len();
        fields.dedup();
        let ages = fields.iter().filter(|f| f.is_age()).count();
        if fields.len() != before || ages > 1 {
            return Err(EhrError::DuplicateField(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            fields,
        })
    }

    /// The name this set was created from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its fields in canonical column order.
    pub fn fields(&self) -> &[EhrField] {
        &self.fields
    }

    /// Width of the encoded vector (`ehr_in`).
    pub fn width(&self) -> usize {
        self.fields.iter().map(|f| f.width()).sum()
    }

    /// Column names of the encoded vector.
    pub fn columns(&self) -> Vec<String> {
        self.fields.iter().flat_map(|f| f.columns()).collect()
    }

    /// Encodes one record; every field of the set must be present.
    pub fn encode(&self, record: &EhrRecord) -> Result<Vec<f32>, EhrError> {
        let mut out = Vec::with_capacity(self.width());
        self.encode_into(record, &mut out)?;
        Ok(out)
    }

    /// Encodes one record, appending `self.width()` values to `out`.
    pub fn encode_into(&self, record: &EhrRecord, out: &mut Vec<f32>) -> Result<(), EhrError> {
        for &field in &self.fields {
            let missing = || EhrError::MissingField {
                field: field.name(),
                set: self.name.clone(),
            };
            match field {
                EhrField::Sex => {
                    let sex = record.sex.ok_or_else(missing)?;
                    push_one_hot(out, 2, (sex == Sex::Female) as usize);
                }
                EhrField::AgeNorm | EhrField::Age5 | EhrField::Age10 => {
                    let age = record.age.ok_or_else(missing)?;
                    if !age.is_finite() || age < 0.0 {
                        return Err(EhrError::InvalidValue {
                            field: "age",
                            message: format!("expected a finite age >= 0, got {age}"),
                        });
                    }
                    match field {
                        EhrField::AgeNorm => out.push((age - AGE_MIN) / (AGE_MAX - AGE_MIN)),
                        EhrField::Age5 => push_one_hot(out, field.width(), bin(age, &AGE5_EDGES)),
                        _ => push_one_hot(out, field.width(), bin(age, &AGE10_EDGES)),
                    }
                }
                EhrField::View => {
                    let index = match record.view.ok_or_else(missing)? {
                        ViewPosition::Pa => 0,
                        ViewPosition::Lateral => 1,
                        ViewPosition::Ap => 2,
                        ViewPosition::Ll => 3,
                    };
                    push_one_hot(out, 4, index);
                }
                EhrField::Orientation => {
                    let o = record.orientation.ok_or_else(missing)?;
                    push_one_hot(out, 2, (o == Orientation::Recumbent) as usize);
                }
                EhrField::Mortality => {
                    let died = record.died_in_hospital.ok_or_else(missing)?;
                    push_one_hot(out, 2, died as usize);
                }
                EhrField::Icu => {
                    let icu = record.in_icu.ok_or_else(missing)?;
                    push_one_hot(out, 2, (!icu) as usize);
                }
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for FeatureSet {
    type Error = EhrError;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::from_name(&name)
    }
}

impl From<FeatureSet> for String {
    fn from(set: FeatureSet) -> Self {
        set.name
    }
}

/// Index of the right-closed bin of `age`: the number of edges strictly below it.
fn bin(age: f32, edges: &[f32]) -> usize {
    edges.iter().filter(|&&e| age > e).count()
}

fn push_one_hot(out: &mut Vec<f32>, width: usize, index: usize) {
    out.extend((0..width).map(|i| if i == index { 1.0 } else { 0.0 }));
}

/// Expands one `+`-separated part of a feature-set name.
fn expand_part(part: &str) -> Option<Vec<EhrField>> {
    use EhrField::*;
    let (base, age) = match part.rsplit_once('-') {
        Some((base, "age5")) => (base, Age5),
        Some((base, "age10")) => (base, Age10),
        _ => (part, AgeNorm),
    };
    let fields = match base {
        "demographic" => vec![Sex, age],
        "all" => vec![Sex, age, View, Orientation, Mortality, Icu],
        _ if base != part => return None,
        "scan" => vec![View, Orientation],
        "inpatient" => vec![Mortality, Icu],
        single => vec![*EhrField::ALL.iter().find(|f| f.name() == single)?],
    };
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_record() -> EhrRecord {
        EhrRecord {
            sex: Some(Sex::Female),
            age: Some(67.0),
            view: Some(ViewPosition::Ap),
            orientation: Some(Orientation::Recumbent),
            died_in_hospital: Some(false),
            in_icu: Some(true),
        }
    }

    #[test]
    fn each_fields_encoding_names_its_columns_in_order() {
        for field in EhrField::ALL {
            let text = field.encoding();
            assert!(
                text.starts_with(&format!("{}: ", field.columns().join(", "))),
                "{text}"
            );
        }
        // The age formula as the encoder applies it: 58 years -> (58 - 16) / 84 = 0.5.
        assert!(
            EhrField::AgeNorm
                .encoding()
                .contains("(age in years - 16) / (100 - 16)")
        );
        let record = EhrRecord {
            age: Some(58.0),
            ..EhrRecord::default()
        };
        let set = FeatureSet::from_name("age").unwrap();
        assert_eq!(set.encode(&record).unwrap(), [0.5]);
    }

    #[test]
    fn the_23_named_sets_parse_with_the_documented_widths() {
        let widths: Vec<usize> = FeatureSet::NAMED
            .iter()
            .map(|n| FeatureSet::from_name(n).unwrap().width())
            .collect();
        // Hand-derived: singles, groups, combinations, all.
        let expected = [
            2, 1, 16, 9, 4, 2, 2, 2, // sex age age5 age10 view orientation mortality icu
            3, 18, 11, 6, 4, // demographic(-age5, -age10), scan, inpatient
            9, 24, 17, 7, 22, 15, 10, // combinations
            13, 28, 21, // all, all-age5, all-age10
        ];
        assert_eq!(widths, expected);
        let unique: std::collections::HashSet<_> = FeatureSet::NAMED
            .iter()
            .map(|n| FeatureSet::from_name(n).unwrap().fields().to_vec())
            .collect();
        assert_eq!(unique.len(), 23, "the 23 sets are all different");
    }

    #[test]
    fn encoding_of_all_matches_a_hand_derived_vector() {
        let v = FeatureSet::from_name("all")
            .unwrap()
            .encode(&full_record())
            .unwrap();
        let age_norm = (67.0 - 16.0) / 84.0;
        let expected = [
            0.0, 1.0,      // female
            age_norm, // age
            0.0, 0.0, 1.0, 0.0, // AP
            0.0, 1.0, // recumbent
            1.0, 0.0, // alive
            1.0, 0.0, // in ICU
        ];
        assert_eq!(v.len(), 13);
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-7, "{v:?}");
        }
    }

    #[test]
    fn age_bins_are_right_closed() {
        let set5 = FeatureSet::from_name("age5").unwrap();
        let set10 = FeatureSet::from_name("age10").unwrap();
        let hot = |set: &FeatureSet, age: f32| {
            let r = EhrRecord {
                age: Some(age),
                ..Default::default()
            };
            let v = set.encode(&r).unwrap();
            assert_eq!(v.iter().sum::<f32>(), 1.0);
            v.iter().position(|&x| x == 1.0).unwrap()
        };
        assert_eq!(hot(&set5, 18.0), 0);
        assert_eq!(hot(&set5, 20.0), 0);
        assert_eq!(hot(&set5, 20.5), 1);
        assert_eq!(hot(&set5, 25.0), 1);
        assert_eq!(hot(&set5, 90.0), 14);
        assert_eq!(hot(&set5, 91.0), 15);
        assert_eq!(hot(&set10, 30.0), 1);
        assert_eq!(hot(&set10, 31.0), 2);
        assert_eq!(hot(&set10, 90.0), 7);
        assert_eq!(hot(&set10, 95.0), 8);
        assert_eq!(set5.columns()[0], "age_le20");
        assert_eq!(set5.columns()[15], "age_gt90");
    }

    #[test]
    fn spelling_does_not_change_the_column_order() {
        let a = FeatureSet::from_name("view+sex").unwrap();
        let b = FeatureSet::from_name("sex+view").unwrap();
        assert_eq!(a.fields(), b.fields());
        assert_eq!(a.columns(), b.columns());
    }

    #[test]
    fn bad_names_and_records_give_clear_errors() {
        let err = FeatureSet::from_name("sex+weight").unwrap_err().to_string();
        assert!(err.contains("'weight'"), "{err}");
        assert!(
            FeatureSet::from_name("demographic+age5").is_err(),
            "two ages"
        );
        assert!(FeatureSet::from_name("sex+sex").is_err());
        assert!(FeatureSet::from_name("scan-age5").is_err());
        let set = FeatureSet::from_name("demographic").unwrap();
        let err = set
            .encode(&EhrRecord {
                sex: Some(Sex::Male),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'age'") && err.contains("demographic"),
            "{err}"
        );
        let err = set
            .encode(&EhrRecord {
                sex: Some(Sex::Male),
                age: Some(f32::NAN),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(err, EhrError::InvalidValue { .. }));
        assert!(Sex::parse("X").is_err());
        assert_eq!(
            ViewPosition::parse("lateral").unwrap(),
            ViewPosition::Lateral
        );
        assert_eq!(Orientation::parse("ERECT").unwrap(), Orientation::Erect);
    }

    #[test]
    fn feature_sets_serialise_as_their_name() {
        let set = FeatureSet::from_name("demographic-age10+inpatient").unwrap();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, "\"demographic-age10+inpatient\"");
        let back: FeatureSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        assert!(serde_json::from_str::<FeatureSet>("\"nope\"").is_err());
    }
}
