//! Checks of command-line values that clap's own types do not make: each returns the value
//! or says what was expected, and clap prints that with the flag's name.

use crate::data::ehr_fields::{AGE_EXPECTED, check_age};

/// A count of at least 1 (epochs: 0 would finish at once, having done nothing).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "expected a whole number of at least 1, got '{text}'"
        )),
    }
}

/// An age in years, as the dataset readers accept it (0 to 120).
pub fn age_years(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(age) if check_age(age) => Ok(age),
        _ => Err(format!("expected {AGE_EXPECTED}, got '{text}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ages_outside_their_range_are_refused() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(
            at_least_one("0")
                .unwrap_err()
                .contains("at least 1, got '0'")
        );
        assert!(at_least_one("-2").is_err() && at_least_one("two").is_err());
        assert_eq!(age_years("64"), Ok(64.0));
        assert_eq!(age_years("0"), Ok(0.0));
        assert_eq!(age_years("120"), Ok(120.0));
        for bad in ["200", "-3", "NaN", "inf", "old"] {
            assert!(
                age_years(bad).unwrap_err().contains("between 0 and 120"),
                "{bad}"
            );
        }
    }
}
