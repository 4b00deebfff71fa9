//! An O_DIRECT `Write` under the `dsimg` stream: bytes are gathered into aligned staging buffers
//! and each full buffer is written at its file offset through io_uring while the next fills
//! (page-cache writes cost ~25 % more CPU: every byte is copied once more in the kernel). The tail is padded to a page and
//! the file truncated back to the exact length in [`DirectWriter::finish`].

use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use super::target::Target;
use crate::buf::{BufPool, PoolBuf};
use crate::error::{Error, Result};
use crate::ring::uring::UringWriter;
use crate::ring::BackendKind;

/// Size of one staging buffer.
pub const STAGE_SIZE: usize = 4 << 20;
/// How far ahead of the writes the file's size is extended.
const SIZE_AHEAD: u64 = 256 << 20;
/// Staging buffers: one filling, the rest in flight.
const STAGES: usize = 3;

/// Streams bytes into a [`Target`] with aligned direct writes.
pub struct DirectWriter {
    /// Declared (so dropped) before `target`: the ring drains its in-flight writes while the file
    /// they name is still open, never after its descriptor could have been reused.
    ring: Option<UringWriter>,
    target: Target,
    pool: BufPool,
    cur: Option<PoolBuf>,
    fill: usize,
    file_off: u64,
    written: u64,
    sized_to: u64,
    /// Write requests issued.
    requests: u64,
}

impl DirectWriter {
    /// Wraps `target`; `backend` chooses io_uring or pwrite.
    pub fn new(target: Target, backend: BackendKind) -> Self {
        let ring = match backend {
            BackendKind::Uring => UringWriter::new(target.file(), target.write_path(), (STAGES - 1) as u32).ok(),
            BackendKind::Pread => None,
        };
        let pool = BufPool::new(STAGE_SIZE, STAGES);
        Self {
            target,
            ring,
            pool,
            cur: None,
            fill: 0,
            file_off: 0,
            written: 0,
            sized_to: 0,
            requests: 0,
        }
    }

    /// Which backend writes.
    pub fn backend(&self) -> BackendKind {
        if self.ring.is_some() {
            BackendKind::Uring
        } else {
            BackendKind::Pread
        }
    }

    fn flush_stage(&mut self, len: usize) -> io::Result<()> {
        let Some(buf) = self.cur.take() else { return Ok(()) };
        let off = self.file_off;
        if off + len as u64 > self.sized_to {
            // Grow i_size ahead of the writes (see `RawSink::new`); `finish` cuts it back.
            self.sized_to = off + len as u64 + SIZE_AHEAD;
            self.target.file().set_len(self.sized_to)?;
        }
        let res = match &mut self.ring {
            Some(ring) if self.target.is_direct() || len.is_multiple_of(4096) => {
                ring.write(buf, off, len as u32, &mut drop).map_err(io::Error::other)
            }
            _ => {
                self.requests += 1;
                self.target.file().write_all_at(&buf.as_slice()[..len], off)
            }
        };
        self.file_off += len as u64;
        self.fill = 0;
        res
    }

    /// Writes what is buffered (padded to a page under O_DIRECT), waits for every write, and
    /// truncates the file to the bytes written. Returns the target and the byte count.
    pub fn finish(mut self) -> Result<(Target, u64)> {
        let path = self.target.write_path().to_owned();
        if self.fill > 0 {
            let len = if self.target.is_direct() {
                self.fill.div_ceil(4096) * 4096
            } else {
                self.fill
            };
            if let Some(b) = self.cur.as_mut() {
                b.as_mut_slice()[self.fill..len].fill(0);
            }
            self.flush_stage(len)
                .map_err(|e| Error::io("write", &path, self.file_off, e))?;
        }
        if let Some(ring) = &mut self.ring {
            ring.finish(&mut drop)?;
            self.requests += ring.requests;
        }
        self.target
            .file()
            .set_len(self.written)
            .map_err(|e| Error::io("truncate", &path, self.written, e))?;
        Ok((self.target, self.written))
    }

    /// Write requests issued so far.
    pub fn requests(&self) -> u64 {
        self.requests + self.ring.as_ref().map_or(0, |r| r.requests)
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let buf = match &mut self.cur {
                Some(b) => b,
                None => self.cur.insert(self.pool.get()),
            };
            let n = rest.len().min(STAGE_SIZE - self.fill);
            buf.as_mut_slice()[self.fill..self.fill + n].copy_from_slice(&rest[..n]);
            self.fill += n;
            rest = &rest[n..];
            if self.fill == STAGE_SIZE {
                self.flush_stage(STAGE_SIZE)?;
            }
        }
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
