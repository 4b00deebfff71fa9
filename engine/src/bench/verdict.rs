//! The verdict of `diskstream bench`: which stage limits a raw and an lz4 export and at what rate,
//! and the extrapolation of a partial pipeline run to a whole device. Pure functions over the
//! measurements, so any frontend gets the same answer (and the tests can pin it).

use serde::Serialize;

use crate::digest::Checksum;

/// The measured limits a verdict is made from (bytes per second; 0 where not measured).
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// The chunk digest on all cores (bounds a raw export).
    pub digest_all: f64,
    /// Zero check + digest + lz4 on all cores (bounds an lz4 export).
    pub worker_all: f64,
    /// The best O_DIRECT read rate of the device, if measured.
    pub device_read: Option<f64>,
    /// The O_DIRECT write rate of the target, if measured.
    pub target_write: Option<f64>,
    /// Disk bytes per stored byte of lz4 output on the sample (a target that writes `w` bytes/s
    /// of output takes `w × ratio` bytes/s of disk).
    pub lz4_ratio: f64,
    /// The whole-device rate of the raw pipeline measured end to end, if run.
    pub raw_measured: Option<f64>,
    /// The whole-device rate of the lz4 pipeline measured end to end, if run.
    pub lz4_measured: Option<f64>,
}

/// What limits an export, and how fast it will go.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Verdict {
    /// Predicted raw export rate.
    pub raw_export_bytes_per_s: f64,
    /// The slowest stage of a raw export.
    pub raw_limited_by: String,
    /// Predicted lz4 (dsimg) export rate.
    pub lz4_export_bytes_per_s: f64,
    /// The slowest stage of an lz4 export.
    pub lz4_limited_by: String,
    /// Whether the predictions are measured pipeline runs (else the slowest stage's rate).
    pub measured_end_to_end: bool,
    /// The chunk digest the verdict is for.
    pub checksum: &'static str,
}

impl Verdict {
    /// The prediction is the measured end-to-end rate where there is one; the limit is always the
    /// slowest stage.
    pub fn decide(checksum: Checksum, l: &Limits) -> Self {
        let digest_stage = format!("{checksum} on all cores");
        let worker_stage = format!("zero check + {checksum} + lz4 on all cores");
        let mut raw: Vec<(String, f64)> = vec![(digest_stage, l.digest_all)];
        let mut lz4: Vec<(String, f64)> = vec![(worker_stage, l.worker_all)];
        if let Some(r) = l.device_read {
            raw.push(("device read".into(), r));
            lz4.push(("device read".into(), r));
        }
        if let Some(w) = l.target_write {
            raw.push(("target write".into(), w));
            lz4.push(("target write (of lz4 output)".into(), w * l.lz4_ratio));
        }
        let (raw_lim, raw_rate) = slowest(&raw);
        let (lz4_lim, lz4_rate) = slowest(&lz4);
        Self {
            raw_export_bytes_per_s: l.raw_measured.unwrap_or(raw_rate),
            raw_limited_by: raw_lim,
            lz4_export_bytes_per_s: l.lz4_measured.unwrap_or(lz4_rate),
            lz4_limited_by: lz4_lim,
            measured_end_to_end: l.raw_measured.is_some() || l.lz4_measured.is_some(),
            checksum: checksum.name(),
        }
    }
}

/// The slowest of the stages that bound an export.
fn slowest(v: &[(String, f64)]) -> (String, f64) {
    v.iter()
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(n, r)| (n.clone(), *r))
        .unwrap_or_default()
}

/// Progress samples `(seconds, bytes)` of one pipeline run.
#[derive(Clone, Debug, Default)]
pub struct Curve(pub Vec<(f64, u64)>);

impl Curve {
    /// The rate a run over `whole` bytes would reach, from a run over `bytes` that took `secs`:
    /// the steady rate (from 20 % of the bytes to the last byte) plus the run's fixed cost (start
    /// up, final flush and sync), which a longer run amortises.
    pub fn extrapolate(&self, bytes: u64, secs: f64, whole: u64) -> f64 {
        let first = self.0.iter().find(|s| s.1 >= bytes / 5);
        let last = self.0.iter().find(|s| s.1 >= bytes);
        let steady = match (first, last) {
            (Some(a), Some(b)) if b.0 > a.0 && b.1 > a.1 => (b.1 - a.1) as f64 / (b.0 - a.0),
            _ => return bytes as f64 / secs.max(1e-9),
        };
        let fixed = (secs - bytes as f64 / steady).max(0.0);
        whole as f64 / (fixed + whole as f64 / steady)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_stage_limits_and_a_measured_run_is_the_prediction() {
        let cpu_only = Limits {
            digest_all: 3e9,
            worker_all: 1e9,
            lz4_ratio: 2.0,
            ..Limits::default()
        };
        let v = Verdict::decide(Checksum::Blake3, &cpu_only);
        assert_eq!(v.raw_limited_by, "blake3 on all cores");
        assert_eq!(v.raw_export_bytes_per_s, 3e9);
        assert_eq!(v.lz4_limited_by, "zero check + blake3 + lz4 on all cores");
        assert!(!v.measured_end_to_end);

        let disks = Limits {
            device_read: Some(2e9),
            target_write: Some(0.4e9),
            raw_measured: Some(0.38e9),
            ..cpu_only
        };
        let v = Verdict::decide(Checksum::Sha256, &disks);
        assert_eq!(v.raw_limited_by, "target write");
        assert_eq!(v.raw_export_bytes_per_s, 0.38e9, "the measured run is the prediction");
        // lz4 output is half the disk bytes: the target takes 0.8 GB/s of disk, the worker 1 GB/s.
        assert_eq!(v.lz4_limited_by, "target write (of lz4 output)");
        assert_eq!(v.lz4_export_bytes_per_s, 0.8e9);
        assert!(v.measured_end_to_end);
        assert_eq!(v.checksum, "sha256");
    }

    #[test]
    fn a_partial_run_is_extrapolated_with_its_fixed_cost_amortised() {
        // 1 GB in 1.5 s: 0.5 s of start-up, then 1 GB/s steady (sampled every 0.1 s).
        let curve = Curve(
            (0..=15)
                .map(|i| (i as f64 / 10.0, ((i as f64 - 5.0).max(0.0) * 1e8) as u64))
                .collect(),
        );
        let whole = curve.extrapolate(1_000_000_000, 1.5, 10_000_000_000);
        // 10 GB: 0.5 s fixed + 10 s = 10.5 s.
        assert!((whole - 10e9 / 10.5).abs() < 1e6, "{whole}");
        // No usable samples: the plain average.
        assert_eq!(Curve::default().extrapolate(100, 2.0, 1000), 50.0);
    }
}
