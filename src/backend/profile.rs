//! Per-op time breakdown of one graph run, the same shape for every backend that can measure it
//! (`Executable::profile`); `ldm bench --profile` prints it and puts it in `--json`.
use serde::Serialize;

/// What one profiled run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Profile {
    /// Time by op kind, largest first.
    pub ops: Vec<OpTime>,
    /// The slowest single steps, slowest first: where one shape (say a low-resolution conv that
    /// fills few workgroups) costs more than its share of the work.
    pub slowest: Vec<StepTime>,
}

/// One step (kernel dispatch) of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepTime {
    /// Kernel, graph node, output shape, workgroup grid: whatever the backend can name.
    pub step: String,
    pub ms: f64,
}

/// How many of the slowest steps a profile keeps.
pub const SLOWEST: usize = 15;

impl Profile {
    /// From (op kind, step description, milliseconds) per step.
    pub fn from_steps<S: AsRef<str>>(steps: &[(S, String, f64)]) -> Profile {
        let mut slowest: Vec<StepTime> = steps
            .iter()
            .map(|(_, step, ms)| StepTime {
                step: step.clone(),
                ms: *ms,
            })
            .collect();
        slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        slowest.truncate(SLOWEST);
        Profile {
            ops: aggregate(steps.iter().map(|(op, _, ms)| (op.as_ref(), *ms))),
            slowest,
        }
    }
}

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

/// The breakdown as aligned text: the table by op with a total line, then the slowest steps.
pub fn table(p: &Profile) -> String {
    let mut s = op_table(&p.ops);
    if !p.slowest.is_empty() {
        s += "slowest steps:\n";
        for t in &p.slowest {
            s += &format!("{:>11.3} ms  {}\n", t.ms, t.step);
        }
    }
    s
}

fn op_table(times: &[OpTime]) -> String {
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
        assert!(op_table(&t).contains("total"));
        let p = Profile::from_steps(&[
            ("linear", "a".into(), 1.0),
            ("conv2d", "b".into(), 3.0),
            ("linear", "c".into(), 2.0),
        ]);
        assert_eq!(p.slowest[0].step, "b");
        assert_eq!(p.ops[0].total_ms, 3.0);
        assert!(table(&p).contains("slowest steps"));
    }
}
