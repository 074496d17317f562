//! Agreement between measured and true lesion burden over serial scans: Bland–Altman
//! bias and limits of agreement, the intraclass correlation for absolute agreement
//! (McGraw and Wong's ICC(A,1), two-way, single measures) and Spearman's rank
//! correlation (of the day-to-day changes, which is what a clinician reads off a
//! longitudinal plot).

use serde::{Deserialize, Serialize};

/// Bland–Altman statistics of `predicted − truth`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlandAltman {
    pub n: usize,
    pub bias: f64,
    /// Bias ∓ 1.96 SD of the differences.
    pub lower: f64,
    pub upper: f64,
}

/// Bland–Altman over `(truth, predicted)` pairs; `None` below two pairs.
pub fn bland_altman(pairs: &[(f64, f64)]) -> Option<BlandAltman> {
    let n = pairs.len();
    if n < 2 {
        return None;
    }
    let d: Vec<f64> = pairs.iter().map(|(t, p)| p - t).collect();
    let bias = d.iter().sum::<f64>() / n as f64;
    let sd = (d.iter().map(|v| (v - bias).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    Some(BlandAltman {
        n,
        bias,
        lower: bias - 1.96 * sd,
        upper: bias + 1.96 * sd,
    })
}

/// ICC(A,1) of `(truth, predicted)` pairs: 1 only when the two agree exactly, lowered
/// by a constant offset as well as by scatter; `None` below two pairs or without
/// variance.
pub fn icc_agreement(pairs: &[(f64, f64)]) -> Option<f64> {
    let n = pairs.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let grand = pairs.iter().map(|(a, b)| a + b).sum::<f64>() / (2.0 * nf);
    let col = [
        pairs.iter().map(|p| p.0).sum::<f64>() / nf,
        pairs.iter().map(|p| p.1).sum::<f64>() / nf,
    ];
    let ss_rows: f64 = pairs
        .iter()
        .map(|(a, b)| 2.0 * ((a + b) / 2.0 - grand).powi(2))
        .sum();
    let ss_cols: f64 = col.iter().map(|c| nf * (c - grand).powi(2)).sum();
    let ss_total: f64 = pairs
        .iter()
        .map(|(a, b)| (a - grand).powi(2) + (b - grand).powi(2))
        .sum();
    let ms_rows = ss_rows / (nf - 1.0);
    let ms_cols = ss_cols;
    let ms_error = (ss_total - ss_rows - ss_cols).max(0.0) / (nf - 1.0);
    let denominator = ms_rows + ms_error + 2.0 / nf * (ms_cols - ms_error);
    (denominator > 0.0).then(|| (ms_rows - ms_error) / denominator)
}

/// Spearman's rank correlation (ties get their mean rank); `None` below three pairs or
/// when either side is constant.
pub fn spearman(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 3 {
        return None;
    }
    let rx = ranks(&pairs.iter().map(|p| p.0).collect::<Vec<_>>());
    let ry = ranks(&pairs.iter().map(|p| p.1).collect::<Vec<_>>());
    pearson(&rx, &ry)
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            out[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    out
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let syy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icc_by_hand() {
        // Rows (1,2), (2,3), (3,4): MSR = 2, MSC = 1.5, MSE = 0, so ICC(A,1) =
        // 2 / (2 + 0 + (2/3)·1.5) = 2/3: a constant offset costs agreement.
        let offset = [(1.0, 2.0), (2.0, 3.0), (3.0, 4.0)];
        assert!((icc_agreement(&offset).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        let same = [(1.0, 1.0), (2.0, 2.0), (5.0, 5.0)];
        assert!((icc_agreement(&same).unwrap() - 1.0).abs() < 1e-12);
        assert!(icc_agreement(&[(1.0, 1.0)]).is_none());
    }

    #[test]
    fn bland_altman_by_hand() {
        // Differences 1, 1, 4: bias 2, SD √3.
        let ba = bland_altman(&[(0.0, 1.0), (1.0, 2.0), (2.0, 6.0)]).unwrap();
        assert!((ba.bias - 2.0).abs() < 1e-12);
        assert!((ba.upper - (2.0 + 1.96 * 3f64.sqrt())).abs() < 1e-12);
        assert!((ba.lower - (2.0 - 1.96 * 3f64.sqrt())).abs() < 1e-12);
    }

    #[test]
    fn spearman_by_hand() {
        let up = [(1.0, 10.0), (2.0, 20.0), (3.0, 25.0), (4.0, 100.0)];
        assert_eq!(spearman(&up), Some(1.0));
        let down: Vec<(f64, f64)> = up.iter().map(|(a, b)| (*a, -b)).collect();
        assert_eq!(spearman(&down), Some(-1.0));
        // Ties: ranks of (1, 1, 2) are (1.5, 1.5, 3).
        assert_eq!(ranks(&[1.0, 1.0, 2.0]), vec![1.5, 1.5, 3.0]);
        assert!(spearman(&[(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)]).is_none());
    }
}
