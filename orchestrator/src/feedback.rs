//! Ganeti's job feedback: the progress format, the catalogue of messages an export prints, and
//! the [`Feedback`] sink operations report through.
//!
//! Operators and their scripts read these lines, so the wording is Ganeti's, character for
//! character (`lib/cmdlib/backup.py`, `lib/masterd/instance.py`). Each message is a function
//! so a typo cannot creep into one call site.

/// One progress sample of a disk transfer, as Ganeti's import/export daemon reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// MiB transferred so far.
    pub mbytes: f64,
    /// Throughput in MiB/s.
    pub throughput: f64,
    /// Percentage done, if the total size is known.
    pub percent: Option<f64>,
    /// Estimated seconds left, if known.
    pub eta: Option<f64>,
}

/// Ganeti's `FormatProgress`: `"<size>, <x.y> MiB/s[, NN%][, ETA <time>]"`.
pub fn format_progress(p: &Progress) -> String {
    let mut parts = vec![format_unit_h(p.mbytes), format!("{:.1} MiB/s", p.throughput)];
    if let Some(percent) = p.percent {
        parts.push(format!("{}%", percent.trunc() as i64));
    }
    if let Some(eta) = p.eta {
        parts.push(format!("ETA {}", format_seconds(eta)));
    }
    parts.join(", ")
}

/// Ganeti's `utils.FormatUnit(mib, "h")`: `268M`, `1.5G`, `2.0T`.
pub fn format_unit_h(mib: f64) -> String {
    if mib < 1024.0 {
        format!("{mib:.0}M")
    } else if mib < 1024.0 * 1024.0 {
        format!("{:.1}G", mib / 1024.0)
    } else {
        format!("{:.1}T", mib / 1024.0 / 1024.0)
    }
}

/// Ganeti's `utils.FormatSeconds`: `49m 1s`, `1d 3h 49m 59s`, `0s`. Once a unit is printed,
/// every smaller unit is printed too (`1h 0m 5s`).
pub fn format_seconds(secs: f64) -> String {
    let mut secs = secs.round_ties_even();
    let mut parts = Vec::new();
    if secs > 0.0 {
        for (unit, one) in [("d", 86400.0), ("h", 3600.0), ("m", 60.0)] {
            let complete = (secs / one).floor();
            secs -= complete * one;
            if complete > 0.0 || !parts.is_empty() {
                parts.push(format!("{}{unit}", complete as i64));
            }
        }
    }
    parts.push(format!("{}s", secs as i64));
    parts.join(" ")
}

/// How a job log line is presented (Ganeti's `ELOG_MESSAGE` plus the CLI's prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A plain message.
    Info,
    /// Printed with ` - WARNING: `.
    Warning,
}

/// The line the Ganeti CLI prints for a job log entry, without the leading `ctime`.
pub fn log_line(level: Level, msg: &str) -> String {
    match level {
        Level::Info => msg.to_string(),
        Level::Warning => format!(" - WARNING: {msg}"),
    }
}

/// "Shutting down instance X".
pub fn shutting_down(instance: &str) -> String {
    format!("Shutting down instance {instance}")
}

/// "Activating disks for X".
pub fn activating_disks(instance: &str) -> String {
    format!("Activating disks for {instance}")
}

/// "Deactivating disks for X".
pub fn deactivating_disks(instance: &str) -> String {
    format!("Deactivating disks for {instance}")
}

/// "Creating a snapshot of disk/I on node N".
pub fn creating_snapshot(idx: usize, node: &str) -> String {
    format!("Creating a snapshot of disk/{idx} on node {node}")
}

/// "Removing snapshot of disk/I on node N".
pub fn removing_snapshot(idx: usize, node: &str) -> String {
    format!("Removing snapshot of disk/{idx} on node {node}")
}

/// "Starting instance X".
pub fn starting_instance(instance: &str) -> String {
    format!("Starting instance {instance}")
}

/// The transfer label of disk `idx`: `snapshot/I` when a snapshot is sent, else `disk/I`.
pub fn disk_label(idx: usize, snapshot: bool) -> String {
    if snapshot {
        format!("snapshot/{idx}")
    } else {
        format!("disk/{idx}")
    }
}

/// "Exporting LABEL from SRC to DST".
pub fn exporting(label: &str, src: &str, dst: &str) -> String {
    format!("Exporting {label} from {src} to {dst}")
}

/// "LABEL is sending data on NODE".
pub fn sending_data(label: &str, node: &str) -> String {
    format!("{label} is sending data on {node}")
}

/// "LABEL is receiving data on NODE".
pub fn receiving_data(label: &str, node: &str) -> String {
    format!("{label} is receiving data on {node}")
}

/// "LABEL sent PROGRESS", e.g. "disk/0 sent 1.5G, 120.2 MiB/s, 37%, ETA 1m 5s".
pub fn sent(label: &str, progress: &Progress) -> String {
    format!("{label} sent {}", format_progress(progress))
}

/// "LABEL finished sending data".
pub fn finished_sending(label: &str) -> String {
    format!("{label} finished sending data")
}

/// "LABEL finished receiving data".
pub fn finished_receiving(label: &str) -> String {
    format!("{label} finished receiving data")
}

/// "LABEL failed to send data: MSG (recent output: OUT)"; without the parenthesis when there
/// is no output (Ganeti prints an empty one).
pub fn failed_to_send(label: &str, msg: &str, recent_output: &str) -> String {
    format!("{label} failed to send data: {msg}{}", recent(recent_output))
}

/// "LABEL failed to receive data: MSG (recent output: OUT)"; the same.
pub fn failed_to_receive(label: &str, msg: &str, recent_output: &str) -> String {
    format!("{label} failed to receive data: {msg}{}", recent(recent_output))
}

fn recent(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!(" (recent output: {output})")
    }
}

/// "Finalizing export on NODE".
pub fn finalizing_export(node: &str) -> String {
    format!("Finalizing export on {node}")
}

/// "Removing instance X".
pub fn removing_instance(instance: &str) -> String {
    format!("Removing instance {instance}")
}

/// "Removing old exports for instance X".
pub fn removing_old_exports(instance: &str) -> String {
    format!("Removing old exports for instance {instance}")
}

/// Warning: "Could not snapshot disk/I on node N: ERR".
pub fn could_not_snapshot(idx: usize, node: &str, err: &str) -> String {
    format!("Could not snapshot disk/{idx} on node {node}: {err}")
}

/// Warning: "Could not remove snapshot for disk/I from node N: ERR".
pub fn could_not_remove_snapshot(idx: usize, node: &str, err: &str) -> String {
    format!("Could not remove snapshot for disk/{idx} from node {node}: {err}")
}

/// Warning: "Could not finalize export for instance X on node N: ERR".
pub fn could_not_finalize(instance: &str, node: &str, err: &str) -> String {
    format!("Could not finalize export for instance {instance} on node {node}: {err}")
}

/// Warning (diskstream's, before the instance is touched): the target's export directory has
/// less room than the instance's disks are large.
pub fn little_room(node: &str, free: u64, disks: u64) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    format!(
        "The export directory on node {node} has {} free and the instance's disks are {}: the export \
         fails for want of space if they hold more data than that (zero runs take no space in the dumps)",
        mib(free),
        mib(disks)
    )
}

/// Warning: "Some disk exports have failed; there may be leftover data for instance X on
/// node N".
pub fn some_disk_exports_failed(instance: &str, node: &str) -> String {
    format!(
        "Some disk exports have failed; there may be leftover data for instance {instance} \
         on node {node}"
    )
}

/// Warning: "Could not remove older export for instance X on node N: ERR".
pub fn could_not_remove_older_export(instance: &str, node: &str, err: &str) -> String {
    format!("Could not remove older export for instance {instance} on node {node}: {err}")
}

/// The `OpExecError` text of a failed export: "Export failed, errors in export finalization,
/// disk export: disk(s) 0, 2". `None` when nothing failed.
pub fn export_failed(finalized: bool, disk_results: &[bool]) -> Option<String> {
    let mut parts = Vec::new();
    if !finalized {
        parts.push("export finalization".to_string());
    }
    let failed: Vec<String> = disk_results
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .map(|(i, _)| i.to_string())
        .collect();
    if !failed.is_empty() {
        parts.push(format!("disk export: disk(s) {}", failed.join(", ")));
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!("Export failed, errors in {}", parts.join(", ")))
    }
}

/// The hint of `gnt-backup remove` when no export was found.
pub const EXPORT_NOT_FOUND_HINT: &str = "Export not found. If trying to remove an export \
     belonging to a deleted instance please use its Fully Qualified Domain Name.";

/// One thing an operation reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A job log line (Ganeti's `ELOG_MESSAGE`), e.g. "Shutting down instance X".
    Message {
        /// Info or warning.
        level: Level,
        /// The message, in Ganeti's wording.
        text: String,
    },
    /// Transfer progress of one disk.
    Progress(DiskProgress),
}

/// A progress sample of one disk transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskProgress {
    /// Disk index.
    pub index: usize,
    /// Transfer label, `disk/I` or `snapshot/I`.
    pub label: String,
    /// Bytes of the disk processed so far.
    pub done_bytes: u64,
    /// Size of the disk in bytes.
    pub total_bytes: u64,
    /// The same in Ganeti's terms (MiB, MiB/s, percent, ETA).
    pub progress: Progress,
}

impl DiskProgress {
    /// Builds a sample from byte counts and the time spent so far.
    pub fn new(index: usize, label: &str, done_bytes: u64, total_bytes: u64, elapsed_secs: f64) -> Self {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let throughput = if elapsed_secs > 0.0 {
            mib(done_bytes) / elapsed_secs
        } else {
            0.0
        };
        let percent = (total_bytes > 0).then(|| (done_bytes as f64 * 100.0 / total_bytes as f64).min(100.0));
        let eta =
            (throughput > 0.0 && total_bytes > 0).then(|| mib(total_bytes.saturating_sub(done_bytes)) / throughput);
        Self {
            index,
            label: label.to_string(),
            done_bytes,
            total_bytes,
            progress: Progress {
                mbytes: mib(done_bytes),
                throughput,
                percent,
                eta,
            },
        }
    }

    /// Ganeti's line: "disk/0 sent 1.5G, 120.2 MiB/s, 37%, ETA 1m 5s".
    pub fn line(&self) -> String {
        sent(&self.label, &self.progress)
    }
}

/// Where an operation sends its [`Event`]s (the CLI prints them; tests collect them).
pub trait Feedback: Send + Sync {
    /// Receives one event.
    fn emit(&self, event: Event);
}

impl dyn Feedback + '_ {
    /// Emits an info message.
    pub fn info(&self, text: impl Into<String>) {
        self.emit(Event::Message {
            level: Level::Info,
            text: text.into(),
        });
    }

    /// Emits a warning.
    pub fn warning(&self, text: impl Into<String>) {
        self.emit(Event::Message {
            level: Level::Warning,
            text: text.into(),
        });
    }
}

/// A [`Feedback`] that keeps every event (for tests and embedders).
#[derive(Debug, Default)]
pub struct Collector {
    events: std::sync::Mutex<Vec<Event>>,
}

impl Collector {
    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("collector").clone()
    }

    /// The message lines so far, as the Ganeti CLI prints them (warnings prefixed).
    pub fn lines(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                Event::Message { level, text } => Some(log_line(*level, text)),
                Event::Progress(_) => None,
            })
            .collect()
    }
}

impl Feedback for Collector {
    fn emit(&self, event: Event) {
        self.events.lock().expect("collector").push(event);
    }
}

/// A [`Feedback`] that drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Feedback for Silent {
    fn emit(&self, _event: Event) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden table of ecosystem.md §1.2, produced by Ganeti's own `FormatProgress`.
    #[test]
    fn format_progress_matches_ganeti_golden_values() {
        type Case = (f64, f64, Option<f64>, Option<f64>, &'static str);
        let cases: [Case; 7] = [
            (268.0, 44.6, Some(0.0), Some(2941.0), "268M, 44.6 MiB/s, 0%, ETA 49m 1s"),
            (
                573.0,
                1.3,
                Some(0.0),
                Some(100199.0),
                "573M, 1.3 MiB/s, 0%, ETA 1d 3h 49m 59s",
            ),
            (573.0, 0.0, Some(0.0), None, "573M, 0.0 MiB/s, 0%"),
            (
                1536.0,
                120.25,
                Some(37.0),
                Some(65.0),
                "1.5G, 120.2 MiB/s, 37%, ETA 1m 5s",
            ),
            (
                2097152.0,
                999.9,
                Some(99.0),
                Some(0.0),
                "2.0T, 999.9 MiB/s, 99%, ETA 0s",
            ),
            (10.0, 5.0, None, None, "10M, 5.0 MiB/s"),
            // From ganeti.masterd.instance_unittest: (1500, 12, 30, None).
            (1500.0, 12.0, Some(30.0), None, "1.5G, 12.0 MiB/s, 30%"),
        ];
        for (mbytes, throughput, percent, eta, want) in cases {
            let p = Progress {
                mbytes,
                throughput,
                percent,
                eta,
            };
            assert_eq!(format_progress(&p), want, "{p:?}");
        }
    }

    #[test]
    fn format_seconds_keeps_inner_zero_units() {
        assert_eq!(format_seconds(0.0), "0s");
        assert_eq!(format_seconds(59.0), "59s");
        assert_eq!(format_seconds(3605.0), "1h 0m 5s");
        assert_eq!(format_seconds(86400.0), "1d 0h 0m 0s");
        assert_eq!(format_seconds(64.6), "1m 5s");
    }

    #[test]
    fn messages_use_ganeti_wording() {
        assert_eq!(shutting_down("i1"), "Shutting down instance i1");
        assert_eq!(creating_snapshot(0, "n1"), "Creating a snapshot of disk/0 on node n1");
        let p = Progress {
            mbytes: 1536.0,
            throughput: 120.25,
            percent: Some(37.0),
            eta: Some(65.0),
        };
        assert_eq!(
            sent(&disk_label(0, false), &p),
            "disk/0 sent 1.5G, 120.2 MiB/s, 37%, ETA 1m 5s"
        );
        assert_eq!(removing_old_exports("i1"), "Removing old exports for instance i1");
        assert_eq!(
            failed_to_send("disk/0", "EIO", "dd: error"),
            "disk/0 failed to send data: EIO (recent output: dd: error)"
        );
        assert_eq!(
            failed_to_receive("disk/1", "ENOSPC", " "),
            "disk/1 failed to receive data: ENOSPC"
        );
        assert_eq!(log_line(Level::Warning, "x"), " - WARNING: x");
        assert_eq!(log_line(Level::Info, "x"), "x");
    }

    #[test]
    fn export_failed_joins_parts_like_ganeti() {
        assert_eq!(export_failed(true, &[true, true]), None);
        assert_eq!(
            export_failed(false, &[false, true, false]).unwrap(),
            "Export failed, errors in export finalization, disk export: disk(s) 0, 2"
        );
        assert_eq!(
            export_failed(false, &[true]).unwrap(),
            "Export failed, errors in export finalization"
        );
        assert_eq!(
            export_failed(true, &[true, false]).unwrap(),
            "Export failed, errors in disk export: disk(s) 1"
        );
    }
}
