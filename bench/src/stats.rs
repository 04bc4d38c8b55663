//! Samples of one measured operation, and their median and p90.

use serde_json::{json, Value};

/// The samples of one operation by one plugin set.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Wall time of each successful call, µs.
    pub wall_us: Vec<u64>,
    /// CPU time (user + system, the call's whole process tree), µs.
    pub cpu_us: Vec<u64>,
    /// Peak RSS, KiB.
    pub rss_kib: Vec<u64>,
    pub failures: usize,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Wall time of the very first call (warm-up included), µs: the cold cost.
    pub first_us: Option<u64>,
    /// Why this contestant was not measured (a binary missing).
    pub skipped: Option<String>,
}

impl Samples {
    pub fn push(&mut self, out: &crate::sys::Out) {
        self.wall_us.push(out.wall.as_micros() as u64);
        self.cpu_us.push(out.cpu.as_micros() as u64);
        self.rss_kib.push(out.maxrss_kib);
    }

    pub fn fail(&mut self, msg: String) {
        self.failures += 1;
        if self.first_error.is_none() {
            self.first_error = Some(msg);
        }
    }

    pub fn n(&self) -> usize {
        self.wall_us.len()
    }

    pub fn median(&self) -> Option<f64> {
        quantile(&self.wall_us, 0.5)
    }

    pub fn p90(&self) -> Option<f64> {
        quantile(&self.wall_us, 0.9)
    }

    pub fn cpu_median(&self) -> Option<f64> {
        quantile(&self.cpu_us, 0.5)
    }

    pub fn rss_median(&self) -> Option<f64> {
        quantile(&self.rss_kib, 0.5)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "n": self.n(),
            "median_us": self.median(),
            "p90_us": self.p90(),
            "cpu_median_us": self.cpu_median(),
            "rss_median_kib": self.rss_median(),
            "failures": self.failures,
            "first_error": self.first_error,
            "first_us": self.first_us,
            "skipped": self.skipped,
            "wall_us": self.wall_us,
        })
    }
}

/// The median is the mean of the two middle values for an even count; other quantiles are the
/// nearest rank (p90 of 50 samples is the 45th smallest).
pub fn quantile(v: &[u64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    if (q - 0.5).abs() < f64::EPSILON {
        return Some(if n % 2 == 1 {
            s[n / 2] as f64
        } else {
            (s[n / 2 - 1] as f64 + s[n / 2] as f64) / 2.0
        });
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    Some(s[rank - 1] as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3, 1, 2], 0.5), Some(2.0));
        assert_eq!(quantile(&[4, 1, 3, 2], 0.5), Some(2.5));
        let v: Vec<u64> = (1..=50).collect();
        assert_eq!(quantile(&v, 0.9), Some(45.0));
        assert_eq!(quantile(&[7], 0.9), Some(7.0));
    }
}
