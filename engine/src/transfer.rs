//! [`Transfer`]: runs any [`Source`] into any [`Sink`] and yields the [`Report`]. It honours the
//! stop flag at every chunk, puts chunks back in disk order for a sink that needs it
//! ([`Reorder`]: bounded by the source's pools), counts zero chunks, finishes the sink, and
//! assembles the report in one place ([`Report::assemble`]).

use std::time::Instant;

use crate::error::Result;
use crate::pipeline::{Payload, Processed, Reorder};
use crate::report::{Report, ReportHead, ZeroCount};
use crate::sink::{Order, Sink};
use crate::source::{RunSpec, Source};
use crate::stop::Progress;
use crate::tuning::Tuning;

/// One source into one sink.
pub struct Transfer<'a> {
    head: ReportHead,
    tuning: &'a Tuning,
    progress: &'a Progress,
    started: Instant,
}

impl<'a> Transfer<'a> {
    /// A transfer for the operation described by `head`, started at `started` (the report's
    /// wall time counts from there: opening and checking are part of the operation).
    pub fn new(head: ReportHead, tuning: &'a Tuning, progress: &'a Progress, started: Instant) -> Self {
        Self {
            head,
            tuning,
            progress,
            started,
        }
    }

    /// Moves every chunk of `source` into `sink` and commits it. On an error (or a stop) the
    /// sink is dropped unfinished, which removes its partial output.
    pub fn run(self, source: &mut dyn Source, mut sink: Box<dyn Sink + '_>) -> Result<Report> {
        let info = source.info();
        let needs = sink.needs();
        let pacer = self.tuning.pacer();
        let gate = sink.lz4_gate();
        let spec = RunSpec {
            tuning: self.tuning,
            needs,
            progress: self.progress,
            pace: pacer.as_ref(),
            lz4_gate: gate.as_ref(),
        };
        let mut zeros = ZeroCount::default();
        let mut reorder = Reorder::new(0);
        let stats = source.run(spec, &mut |p: Processed| {
            self.tuning.check_stop()?;
            if matches!(p.payload, Payload::Zero) {
                zeros.chunks += 1;
                zeros.bytes += u64::from(p.len);
            }
            match needs.order {
                Order::Any => sink.put(p),
                Order::Disk => reorder.push(p.index, p, |p| sink.put(p)),
            }
        })?;
        let done = sink.finish()?;
        Ok(Report::assemble(
            self.head,
            info,
            stats,
            zeros,
            done,
            self.started.elapsed(),
        ))
    }
}
