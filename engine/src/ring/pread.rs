//! The reference read backend: one blocking `pread` at a time, in disk order.

use std::os::unix::fs::FileExt;

use super::{zero_gaps, BackendKind, ReadBackend, ReadChunk, ReadStats};
use crate::buf::BufPool;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::plan::ReadPlan;

/// Blocking positional reads; simple enough to trust, used to check the fast path.
#[derive(Debug, Default)]
pub struct PreadReader {
    pace: Option<std::sync::Arc<crate::pace::Pacer>>,
}

impl PreadReader {
    /// A new reader.
    pub fn new() -> Self {
        Self { pace: None }
    }
}

impl ReadBackend for PreadReader {
    fn kind(&self) -> BackendKind {
        BackendKind::Pread
    }

    fn set_pacer(&mut self, pacer: Option<std::sync::Arc<crate::pace::Pacer>>) {
        self.pace = pacer;
    }

    fn read_all(
        &mut self,
        src: &Disk,
        plans: &ReadPlan,
        pool: &BufPool,
        deliver: &mut dyn FnMut(ReadChunk) -> Result<()>,
    ) -> Result<ReadStats> {
        let mut stats = ReadStats::default();
        for plan in plans.iter() {
            if plan.is_hole() {
                stats.hole_chunks += 1;
                deliver(ReadChunk {
                    index: plan.index,
                    offset: plan.offset,
                    len: plan.len,
                    buf: None,
                })?;
                continue;
            }
            // --bwlimit: the pacer's wait ends at once when the run is stopped.
            if let Some(p) = &self.pace {
                if !p.wait(u64::from(plan.len)) {
                    return Err(Error::Cancelled);
                }
            }
            let mut buf = pool.get();
            zero_gaps(plan, plans.segments(plan), &mut buf);
            for seg in plans.segments(plan) {
                let dst = &mut buf.as_mut_slice()[seg.buf_off as usize..][..seg.len as usize];
                let mut done = 0usize;
                while done < dst.len() {
                    let off = seg.disk_off + done as u64;
                    stats.requests += 1;
                    match src.file().read_at(&mut dst[done..], off) {
                        Ok(0) => break, // End of file inside the aligned tail.
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io("read", src.path(), off, e)),
                    }
                }
                stats.bytes_read += done as u64;
                let need = (plan.offset + u64::from(plan.len)).min(seg.disk_off + u64::from(seg.len));
                if seg.disk_off + (done as u64) < need {
                    return Err(Error::io(
                        "read",
                        src.path(),
                        seg.disk_off + done as u64,
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "source ended early (was it truncated while reading?)",
                        ),
                    ));
                }
            }
            deliver(ReadChunk {
                index: plan.index,
                offset: plan.offset,
                len: plan.len,
                buf: Some(buf),
            })?;
        }
        Ok(stats)
    }
}
