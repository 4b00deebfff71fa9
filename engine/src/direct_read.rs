//! A sequential `Read` over a file opened with O_DIRECT: large aligned positional reads into one
//! owned buffer, so a `dsimg` stream is checked without going through the page cache.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use crate::buf::AlignedBuf;

/// Size of each read.
const READ_SIZE: usize = 4 << 20;

/// Reads a file front to back in aligned 4 MiB pieces.
pub struct DirectReader {
    file: File,
    buf: AlignedBuf,
    pos: usize,
    filled: usize,
    file_off: u64,
    eof: bool,
    /// Read requests issued.
    pub requests: u64,
}

impl DirectReader {
    /// Starts at offset 0 of `file` (opened with O_DIRECT, or buffered where the file system
    /// refuses it).
    pub fn new(file: File) -> Self {
        Self {
            file,
            buf: AlignedBuf::new(READ_SIZE),
            pos: 0,
            filled: 0,
            file_off: 0,
            eof: false,
            requests: 0,
        }
    }
}

impl Read for DirectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            if self.eof {
                return Ok(0);
            }
            let mut got = 0;
            while got < READ_SIZE {
                self.requests += 1;
                match self
                    .file
                    .read_at(&mut self.buf.as_mut_slice()[got..READ_SIZE], self.file_off + got as u64)
                {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    // O_DIRECT returns whole blocks except at end of file.
                    Ok(n) if n % 512 != 0 => {
                        got += n;
                        self.eof = true;
                        break;
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.file_off += got as u64;
            self.pos = 0;
            self.filled = got;
            if got == 0 {
                return Ok(0);
            }
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf.as_slice()[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
