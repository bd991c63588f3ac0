//! Parsing and writing of EHR values in table cells, shared by the readers. Blank cells
//! are missing values (`None`); anything else must be one of the accepted spellings.

use cxr_msn::ehr::{Orientation, Sex, ViewPosition};

use super::DataError;
use super::table::{Column, Row};

/// The oldest age accepted, in years; older values are data errors.
pub const MAX_AGE: f32 = 120.0;

/// What an age cell must hold.
pub const AGE_EXPECTED: &str = "an age in years between 0 and 120";

/// `M`, `F`, `Male`, `Female` (any case); blank = missing.
pub fn sex(row: &Row<'_>, column: &Column) -> Result<Option<Sex>, DataError> {
    let value = row.get(column);
    if value.is_empty() {
        return Ok(None);
    }
    Sex::parse(value)
        .map(Some)
        .map_err(|_| row.bad(column, "M, F, Male or Female (or blank)"))
}

/// A number of years in 0..=120; blank = missing.
pub fn age(row: &Row<'_>, column: &Column) -> Result<Option<f32>, DataError> {
    match row.parse_opt::<f32>(column, AGE_EXPECTED)? {
        Some(age) if !check_age(age) => Err(row.bad(column, AGE_EXPECTED)),
        age => Ok(age),
    }
}

/// Whether `age` is a possible age in years.
pub fn check_age(age: f32) -> bool {
    (0.0..=MAX_AGE).contains(&age)
}

/// `PA`, `AP`, `LATERAL`, `LL` (any case); blank = missing.
pub fn view(row: &Row<'_>, column: &Column) -> Result<Option<ViewPosition>, DataError> {
    let value = row.get(column);
    if value.is_empty() {
        return Ok(None);
    }
    ViewPosition::parse(value)
        .map(Some)
        .map_err(|_| row.bad(column, "PA, AP, LATERAL or LL (or blank)"))
}

/// `Erect` or `Recumbent` (any case); blank = missing.
pub fn orientation(row: &Row<'_>, column: &Column) -> Result<Option<Orientation>, DataError> {
    let value = row.get(column);
    if value.is_empty() {
        return Ok(None);
    }
    Orientation::parse(value)
        .map(Some)
        .map_err(|_| row.bad(column, "Erect or Recumbent (or blank)"))
}

/// `1`/`0`, `1.0`/`0.0` or `true`/`false` (any case); blank = missing.
pub fn flag(row: &Row<'_>, column: &Column) -> Result<Option<bool>, DataError> {
    match row.get(column).to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "1" | "1.0" | "true" => Ok(Some(true)),
        "0" | "0.0" | "false" => Ok(Some(false)),
        _ => Err(row.bad(column, "1, 0, true or false (or blank)")),
    }
}

/// The spelling written to files: `M` or `F`.
pub fn sex_code(sex: Sex) -> &'static str {
    match sex {
        Sex::Male => "M",
        Sex::Female => "F",
    }
}

/// The spelling written to files: `PA`, `LATERAL`, `AP`, `LL`.
pub fn view_name(view: ViewPosition) -> &'static str {
    match view {
        ViewPosition::Pa => "PA",
        ViewPosition::Lateral => "LATERAL",
        ViewPosition::Ap => "AP",
        ViewPosition::Ll => "LL",
    }
}

/// The spelling written to files: `Erect` or `Recumbent`.
pub fn orientation_name(orientation: Orientation) -> &'static str {
    match orientation {
        Orientation::Erect => "Erect",
        Orientation::Recumbent => "Recumbent",
    }
}

/// The views in the order of the encoder's columns (and of imputation ties).
pub const VIEWS: [ViewPosition; 4] = [
    ViewPosition::Pa,
    ViewPosition::Lateral,
    ViewPosition::Ap,
    ViewPosition::Ll,
];

/// The orientations in the order of the encoder's columns (and of imputation ties).
pub const ORIENTATIONS: [Orientation; 2] = [Orientation::Erect, Orientation::Recumbent];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::OnBadRow;
    use crate::data::table::Table;
    use crate::data::table::tests::write;

    #[test]
    fn each_field_accepts_its_spellings_and_names_the_row_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "f.csv",
            "sex,age,view,orientation,flag\n\
             Male,67,lateral,ERECT,true\n\
             ,,,,\n\
             X,121,SWIMMERS,sitting,yes\n",
        );
        let mut table = Table::open(&path).unwrap();
        let c = table
            .require(&["sex", "age", "view", "orientation", "flag"])
            .unwrap();
        let mut seen = Vec::new();
        let mut errors = Vec::new();
        table
            .for_each_row(OnBadRow::Fail, |row| {
                if row.number() < 4 {
                    seen.push((
                        sex(row, &c[0])?,
                        age(row, &c[1])?,
                        view(row, &c[2])?,
                        orientation(row, &c[3])?,
                        flag(row, &c[4])?,
                    ));
                } else {
                    errors.push(sex(row, &c[0]).unwrap_err().to_string());
                    errors.push(age(row, &c[1]).unwrap_err().to_string());
                    errors.push(view(row, &c[2]).unwrap_err().to_string());
                    errors.push(orientation(row, &c[3]).unwrap_err().to_string());
                    errors.push(flag(row, &c[4]).unwrap_err().to_string());
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(
            seen[0],
            (
                Some(Sex::Male),
                Some(67.0),
                Some(ViewPosition::Lateral),
                Some(Orientation::Erect),
                Some(true)
            )
        );
        assert_eq!(seen[1], (None, None, None, None, None));
        let expected = [
            "row 4, field 'sex': expected M, F, Male or Female (or blank), found 'X'",
            "row 4, field 'age': expected an age in years between 0 and 120, found '121'",
            "row 4, field 'view': expected PA, AP, LATERAL or LL (or blank), found 'SWIMMERS'",
            "row 4, field 'orientation': expected Erect or Recumbent (or blank), found 'sitting'",
            "row 4, field 'flag': expected 1, 0, true or false (or blank), found 'yes'",
        ];
        for (err, want) in errors.iter().zip(expected) {
            assert!(err.contains("f.csv: ") && err.ends_with(want), "{err}");
        }
    }
}
