//! How the cluster commands print job messages and disk progress: Ganeti's lines
//! (`Thu May  5 12:28:52 2011 Shutting down instance X`, warnings with ` - WARNING: `; times in
//! UTC) on stdout, or on stderr when `--json` keeps stdout for the result; one indicatif bar per
//! disk when stderr is a terminal; or, with `--progress json`, one [`Event`] per line on stderr.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use diskstream_orchestrator::feedback::{format_seconds, log_line, DiskProgress, Event as JobEvent, Feedback, Level};

use crate::contract::{self, Event, Op, ProgressEvent};

/// One progress bar per disk, on stderr, for a terminal.
pub struct Bars {
    multi: indicatif::MultiProgress,
    /// The bars by disk index, created when a disk's first progress sample arrives.
    bars: Mutex<Vec<Option<indicatif::ProgressBar>>>,
}

impl Bars {
    /// Bars if stderr is a terminal, else `None` (plain lines).
    pub fn for_stderr() -> Option<Self> {
        std::io::stderr().is_terminal().then(|| Self {
            multi: indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr()),
            bars: Mutex::new(Vec::new()),
        })
    }

    fn update(&self, p: &DiskProgress) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if bars.len() <= p.index {
            bars.resize(p.index + 1, None);
        }
        let bar = bars[p.index].get_or_insert_with(|| {
            let bar = self.multi.add(indicatif::ProgressBar::new(p.total_bytes.max(1)));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(p.label.clone());
            bar
        });
        // Rate and ETA of the whole disk so far, as in Ganeti's "disk/0 sent ..." lines
        // (indicatif's own estimate starts from the first sample and overshoots).
        let rate = format!("{:.1} MiB/s", p.progress.throughput);
        bar.set_position(p.done_bytes);
        if p.total_bytes > 0 && p.done_bytes >= p.total_bytes {
            bar.set_message(format!("{rate}, done"));
            bar.finish();
        } else {
            let eta = p.progress.eta.map(format_seconds).unwrap_or_else(|| "?".into());
            bar.set_message(format!("{rate}, ETA {eta}"));
        }
    }

    /// Leaves every bar drawn where it stopped (a failed disk's bar stops short).
    fn finish(&self) {
        for bar in self.bars.lock().unwrap_or_else(|e| e.into_inner()).iter().flatten() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

/// Prints job messages.
pub struct Printer {
    op: Op,
    json_events: bool,
    to_stderr: bool,
    lock: Mutex<()>,
    /// Progress bars (a terminal, without `--progress json`).
    bars: Option<Bars>,
}

impl Printer {
    /// A printer for `op`: JSON events on stderr, or lines on stdout (stderr if `to_stderr`),
    /// with `bars` for the disks' progress.
    pub fn new(op: Op, json_events: bool, to_stderr: bool, bars: Option<Bars>) -> Self {
        Self {
            op,
            json_events,
            to_stderr,
            lock: Mutex::new(()),
            bars,
        }
    }

    /// Prints one line.
    pub fn line(&self, s: &str) {
        // Control characters escaped, as in the log (`crate::logging`): a name cannot forge a line.
        let s = crate::logging::escape_controls(s);
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let write = || {
            if self.to_stderr || self.json_events {
                let _ = writeln!(std::io::stderr(), "{s}");
            } else {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{s}");
                let _ = out.flush();
            }
        };
        match &self.bars {
            // The bars are cleared while the line prints, and drawn again below it.
            Some(b) => b.multi.suspend(write),
            None => write(),
        }
    }

    /// Leaves the bars drawn where they stopped.
    pub fn finish_bars(&self) {
        if let Some(b) = &self.bars {
            b.finish();
        }
    }

    /// The `--progress json` line of a job event.
    fn json_line(&self, event: &JobEvent, now: f64) -> String {
        let e = match event {
            JobEvent::Message { level, text } => Event::Message {
                op: self.op,
                time: now,
                level: match level {
                    Level::Info => "info",
                    Level::Warning => "warning",
                },
                text,
            },
            JobEvent::Progress(p) => Event::Progress(ProgressEvent {
                op: self.op,
                time: now,
                disk: Some(p.index),
                label: Some(&p.label),
                done_bytes: p.done_bytes,
                total_bytes: p.total_bytes,
                bytes_per_s: p.progress.throughput * (1u64 << 20) as f64,
                percent: p.progress.percent,
                eta_s: p.progress.eta,
                line: Some(p.line()),
            }),
        };
        serde_json::to_string(&e).unwrap_or_else(|e| format!("{{\"event\":\"error\",\"text\":\"{e}\"}}"))
    }
}

impl Feedback for Printer {
    fn emit(&self, event: JobEvent) {
        let now = contract::now();
        if let JobEvent::Message {
            level: Level::Warning,
            text,
        } = &event
        {
            tracing::warn!("{}: {text}", self.op.name());
        }
        if self.json_events {
            self.line(&self.json_line(&event, now));
            return;
        }
        if let (Some(bars), JobEvent::Progress(p)) = (&self.bars, &event) {
            bars.update(p);
            return;
        }
        let text = match &event {
            JobEvent::Message { level, text } => log_line(*level, text),
            JobEvent::Progress(p) => p.line(),
        };
        self.line(&format!("{} {text}", ctime(now as u64)));
    }
}

/// Python's `time.ctime` in UTC: `Thu May  5 12:28:52 2011`.
pub fn ctime(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, d) = diskstream_orchestrator::locking::civil_from_days(days as i64);
    format!(
        "{} {} {d:>2} {:02}:{:02}:{:02} {y}",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
