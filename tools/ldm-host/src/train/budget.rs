//! `--max-seconds`: fit a run into a wall-clock budget (a lent GPU for a few minutes, a CI
//! slot). The step rate is measured as the run goes and the schedule's end (and the start of
//! the learning-rate decay, in proportion) moves so the run finishes its decay on time rather
//! than being cut off at full rate.
use super::optim::AdamWConfig;
use std::time::{Duration, Instant};

pub struct TimeBudget {
    deadline: Instant,
    /// (time, step) at the last rate measurement.
    mark: (Instant, u64),
    first: u64,
    max_steps: u64,
    /// Where the decay starts as a fraction of the remaining run (None = no decay).
    decay_frac: Option<f64>,
    measured: bool,
}

impl TimeBudget {
    /// `first`: the step the run (re)started at; `cfg` holds the requested schedule, whose
    /// `total` becomes the upper bound.
    pub fn new(seconds: f64, first: u64, cfg: &AdamWConfig) -> Self {
        let now = Instant::now();
        let span = cfg.total.saturating_sub(first).max(1) as f64;
        let decay_frac = (cfg.decay_start > first && cfg.decay_start < cfg.total)
            .then(|| (cfg.decay_start - first) as f64 / span);
        Self {
            deadline: now + Duration::from_secs_f64(seconds.max(0.0)),
            mark: (now, first),
            first,
            max_steps: cfg.total,
            decay_frac,
            measured: false,
        }
    }

    /// Called after each step; may move `cfg.total` and `cfg.decay_start`. Past the deadline
    /// the run ends at this step.
    pub fn update(&mut self, cfg: &mut AdamWConfig, step: u64) {
        let now = Instant::now();
        if now >= self.deadline {
            cfg.total = step;
            return;
        }
        // The first window includes kernel compilation on GPUs, so it is short and later
        // windows (100 steps) keep replacing its estimate. The schedule's end keeps moving
        // with the rate: a small bend in the decay costs less than ending early or late (an
        // early version froze it once the decay began, which froze a GPU run on its first,
        // compile-slowed estimate and ended it at half its budget).
        let window = if self.measured { 100 } else { 20 };
        if step < self.mark.1 + window {
            return;
        }
        let rate = (step - self.mark.1) as f64 / (now - self.mark.0).as_secs_f64().max(1e-9);
        let left = (self.deadline - now).as_secs_f64();
        let total = (step + (rate * left) as u64).clamp(step + 1, self.max_steps);
        cfg.total = total;
        if let Some(f) = self.decay_frac {
            cfg.decay_start = self.first + ((total - self.first) as f64 * f) as u64;
        }
        self.mark = (now, step);
        self.measured = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_the_schedule_to_the_measured_rate_and_keeps_the_decay_proportion() {
        let mut cfg = AdamWConfig {
            total: 1_000_000,
            decay_start: 500_000,
            ..Default::default()
        };
        let mut b = TimeBudget::new(0.5, 0, &cfg);
        let t0 = Instant::now();
        let mut step = 0;
        while step < cfg.total {
            std::thread::sleep(Duration::from_millis(2));
            step += 1;
            b.update(&mut cfg, step);
        }
        let secs = t0.elapsed().as_secs_f64();
        // Ends near the budget (not after a million steps), with the decay at half the run.
        assert!(secs < 1.0, "{secs}");
        assert!(cfg.total < 400, "{}", cfg.total);
        assert!(
            cfg.decay_start > 0 && cfg.decay_start < cfg.total,
            "{} {}",
            cfg.decay_start,
            cfg.total
        );
    }
}
