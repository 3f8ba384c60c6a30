//! Per-op time breakdown of one graph run, the same shape for every backend that can measure it
//! (`Executable::profile`); `ldm bench --profile` prints it and puts it in `--json`.
use serde::Serialize;

/// Time spent in one kind of op (conv2d, linear, attention, group_norm+silu, ...) in one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpTime {
    pub op: String,
    /// Kernel dispatches (or op executions) of this kind per run.
    pub count: usize,
    pub total_ms: f64,
    /// Fraction of the summed time of all ops, in [0, 1].
    pub share: f64,
}

/// Sums (label, milliseconds) samples by label, largest total first.
pub fn aggregate<'a>(samples: impl IntoIterator<Item = (&'a str, f64)>) -> Vec<OpTime> {
    let mut by: Vec<OpTime> = Vec::new();
    for (op, ms) in samples {
        match by.iter_mut().find(|t| t.op == op) {
            Some(t) => {
                t.count += 1;
                t.total_ms += ms;
            }
            None => by.push(OpTime {
                op: op.to_string(),
                count: 1,
                total_ms: ms,
                share: 0.0,
            }),
        }
    }
    let sum: f64 = by.iter().map(|t| t.total_ms).sum();
    for t in &mut by {
        t.share = if sum > 0.0 { t.total_ms / sum } else { 0.0 };
    }
    by.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    by
}

/// The breakdown as an aligned text table with a total line.
pub fn table(times: &[OpTime]) -> String {
    let mut s = format!(
        "{:<18} {:>6} {:>11} {:>7}\n",
        "op", "count", "total ms", "share"
    );
    for t in times {
        s += &format!(
            "{:<18} {:>6} {:>11.3} {:>6.1}%\n",
            t.op,
            t.count,
            t.total_ms,
            t.share * 100.0
        );
    }
    let total: f64 = times.iter().map(|t| t.total_ms).sum();
    let n: usize = times.iter().map(|t| t.count).sum();
    s += &format!("{:<18} {:>6} {:>11.3} {:>6.1}%\n", "total", n, total, 100.0);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_by_label_largest_first() {
        let t = aggregate([
            ("linear", 1.0),
            ("conv2d", 2.0),
            ("linear", 2.0),
            ("silu", 0.0),
        ]);
        assert_eq!(t[0].op, "linear");
        assert_eq!((t[0].count, t[0].total_ms), (2, 3.0));
        assert_eq!(t[1].op, "conv2d");
        assert!((t.iter().map(|x| x.share).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(table(&t).contains("total"));
    }
}
