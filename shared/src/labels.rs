//! Label sets and their orders (METHOD.md sections 7 and 8).

/// The 14 MIMIC-CXR (CheXpert-labeller) findings in the MIMIC files' (alphabetical) order:
/// the output order of every MIMIC-trained head.
pub const MIMIC_LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
];

/// The same 14 findings in the column order of CheXpert's train.csv / valid.csv / test.csv.
pub const CHEXPERT_LABELS: [&str; 14] = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
];

/// The 14 NIH ChestX-ray14 findings (its own label set; "No Finding" is the absence of all).
pub const NIH_LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
];

/// For each name of `to`, its index in `from` (`None` where `from` lacks it): reorders
/// columns, e.g. CheXpert's into the MIMIC order.
pub fn reorder(from: &[&str], to: &[&str]) -> Vec<Option<usize>> {
    to.iter()
        .map(|name| from.iter().position(|f| f == name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chexpert_columns_map_onto_the_mimic_order() {
        let map = reorder(&CHEXPERT_LABELS, &MIMIC_LABELS);
        assert!(map.iter().all(Option::is_some), "same 14 findings");
        // Atelectasis is CheXpert column 8, MIMIC column 0; No Finding 0 -> 8.
        assert_eq!(map[0], Some(8));
        assert_eq!(map[8], Some(0));
        let mut sorted = MIMIC_LABELS;
        sorted.sort_unstable();
        assert_eq!(sorted, MIMIC_LABELS, "MIMIC order is alphabetical");
        assert_eq!(reorder(&NIH_LABELS, &MIMIC_LABELS)[0], Some(0));
        assert_eq!(
            reorder(&NIH_LABELS, &MIMIC_LABELS)[5],
            None,
            "NIH has no Fracture"
        );
    }
}
