//! Conditional-mode imputation of a categorical value (the declared deviation of
//! METHOD.md section 5: the authors used an iterative random-forest imputer).
//!
//! The rule: a missing value becomes the most frequent observed value among the images of
//! the same group (for MIMIC-CXR, the same `PerformedProcedureStepDescription`, e.g.
//! "CHEST (PORTABLE AP)"); when the group has no observed value, or the image has no group
//! (a blank description), the most frequent observed value over all images. Ties go to
//! the value listed first in the category's canonical order (for views PA, LATERAL, AP,
//! LL; for orientations Erect, Recumbent). Only observed values count: imputed values
//! never feed later imputations, so the result does not depend on row order.

use std::collections::HashMap;

/// Counts observed values per group and overall, then imputes by the rule above.
#[derive(Debug, Clone)]
pub struct ModeImputer<V: 'static> {
    order: &'static [V],
    groups: HashMap<String, Vec<usize>>,
    global: Vec<usize>,
}

impl<V: Copy + PartialEq> ModeImputer<V> {
    /// An imputer over the values of `order`, which also breaks ties.
    pub fn new(order: &'static [V]) -> Self {
        Self {
            order,
            groups: HashMap::new(),
            global: vec![0; order.len()],
        }
    }

    /// Records one observed value of an image in `group` (blank = no group).
    pub fn observe(&mut self, group: &str, value: V) {
        let Some(index) = self.order.iter().position(|v| *v == value) else {
            return;
        };
        self.global[index] += 1;
        let group = group.trim();
        if !group.is_empty() {
            self.groups
                .entry(group.to_string())
                .or_insert_with(|| vec![0; self.order.len()])[index] += 1;
        }
    }

    /// The value for an image of `group` whose value is missing: the group's mode, else
    /// the global mode; `None` when nothing was observed at all.
    pub fn impute(&self, group: &str) -> Option<V> {
        self.groups
            .get(group.trim())
            .and_then(|counts| self.mode(counts))
            .or_else(|| self.mode(&self.global))
    }

    /// The most frequent value of `counts` (first in `order` on a tie), if any was seen.
    fn mode(&self, counts: &[usize]) -> Option<V> {
        let (index, &count) = counts
            .iter()
            .enumerate()
            .rev()
            .max_by_key(|(_, count)| **count)?;
        (count > 0).then(|| self.order[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: [char; 3] = ['a', 'b', 'c'];

    #[test]
    fn the_group_mode_wins_then_the_global_mode_with_ties_to_the_first_value() {
        let mut imp = ModeImputer::new(&ORDER);
        assert_eq!(imp.impute("g"), None, "nothing observed");
        for (group, value) in [("g", 'b'), ("g", 'b'), ("g", 'c'), ("h", 'c'), ("h", 'a')] {
            imp.observe(group, value);
        }
        imp.observe("", 'c');
        assert_eq!(imp.impute("g"), Some('b'), "group mode");
        assert_eq!(imp.impute(" g "), Some('b'), "groups are trimmed");
        assert_eq!(imp.impute("h"), Some('a'), "tie a/c goes to a");
        // Global: a 1, b 2, c 3.
        assert_eq!(imp.impute("unknown group"), Some('c'));
        assert_eq!(imp.impute(""), Some('c'), "no group: global mode");
    }
}
