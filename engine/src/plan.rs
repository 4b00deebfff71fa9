//! The read plan: cuts a disk into fixed-size chunks and, for files, keeps only the parts of each
//! chunk that hold data, so holes are never read: a chunk with no data at all becomes a hole chunk
//! that costs no I/O and no buffer. Pure: the file system is asked once, before.

/// One positional read into a chunk's buffer: `len` bytes from disk offset `disk_off`
/// land at `buf_off` in the buffer. Both offsets and the length are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the chunk buffer.
    pub buf_off: u32,
    /// Offset in the source.
    pub disk_off: u64,
    /// Bytes to read (aligned up; a read may come back short only at end of file).
    pub len: u32,
}

/// One chunk of the disk; its reads are in the [`ReadPlan`] it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Index of the chunk (offset / chunk size).
    pub index: u64,
    /// Offset of the chunk in the disk.
    pub offset: u64,
    /// Bytes of disk in this chunk (the last one may be short).
    pub len: u32,
    seg_start: u32,
    seg_count: u32,
}

impl ChunkPlan {
    /// True if and only if the chunk lies wholly in a hole and needs no read.
    pub fn is_hole(&self) -> bool {
        self.seg_count == 0
    }
}

/// The chunks of a disk and the reads that fill them, in two flat vectors (a handful of
/// allocations for the whole disk, none per chunk).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadPlan {
    chunks: Vec<ChunkPlan>,
    segments: Vec<Segment>,
}

impl ReadPlan {
    /// The reads of `chunk` (empty for a hole chunk).
    pub fn segments(&self, chunk: &ChunkPlan) -> &[Segment] {
        &self.segments[chunk.seg_start as usize..][..chunk.seg_count as usize]
    }
}

impl std::ops::Deref for ReadPlan {
    type Target = [ChunkPlan];
    fn deref(&self) -> &[ChunkPlan] {
        &self.chunks
    }
}

/// More separate reads than this in one chunk are merged into one read over their span.
pub const MAX_SEGMENTS: usize = 16;

/// Cuts `[0, size)` into chunks of `chunk_size` and intersects each with the data extents,
/// widening every read to `align`. Pure: the file system is asked once, before.
pub fn plan_chunks(size: u64, chunk_size: u32, align: u32, extents: &[(u64, u64)]) -> ReadPlan {
    let cs = u64::from(chunk_size);
    let align = u64::from(align.max(1));
    let count = size.div_ceil(cs);
    let mut plan = ReadPlan {
        chunks: Vec::with_capacity(count as usize),
        segments: Vec::new(),
    };
    let mut segments: Vec<Segment> = Vec::new();
    let mut ext = 0usize;
    for index in 0..count {
        let offset = index * cs;
        let end = (offset + cs).min(size);
        segments.clear();
        while ext < extents.len() && extents[ext].1 <= offset {
            ext += 1;
        }
        let mut i = ext;
        while i < extents.len() && extents[i].0 < end {
            let s = extents[i].0.max(offset) / align * align;
            let e = extents[i].1.min(end).div_ceil(align) * align;
            let e = e.min(offset + cs);
            match segments.last_mut() {
                Some(last) if last.disk_off + u64::from(last.len) >= s => {
                    let new_end = e.max(last.disk_off + u64::from(last.len));
                    last.len = (new_end - last.disk_off) as u32;
                }
                _ => segments.push(Segment {
                    buf_off: (s - offset) as u32,
                    disk_off: s,
                    len: (e - s) as u32,
                }),
            }
            i += 1;
        }
        if segments.len() > MAX_SEGMENTS {
            // Many small islands: one read over the span is cheaper than many small ones
            // (holes inside it read as zeroes without device I/O).
            let first = segments[0];
            let last = segments[segments.len() - 1];
            let end = last.disk_off + u64::from(last.len);
            segments.clear();
            segments.push(Segment {
                len: (end - first.disk_off) as u32,
                ..first
            });
        }
        plan.chunks.push(ChunkPlan {
            index,
            offset,
            len: (end - offset) as u32,
            seg_start: plan.segments.len() as u32,
            seg_count: segments.len() as u32,
        });
        plan.segments.extend_from_slice(&segments);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_disk_is_one_segment_per_chunk() {
        let p = plan_chunks(10_000, 4096, 512, &[(0, 10_000)]);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].len, 10_000 - 8192);
        assert_eq!(
            p.segments(&p[2]),
            vec![Segment {
                buf_off: 0,
                disk_off: 8192,
                len: 2048
            }]
        );
    }

    #[test]
    fn holes_are_skipped_and_partial_extents_aligned() {
        // Data at [5000, 6000) and [20000, 20001) in a 24 KiB disk with 8 KiB chunks.
        let p = plan_chunks(24_576, 8192, 4096, &[(5000, 6000), (20_000, 20_001)]);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p.segments(&p[0]),
            vec![Segment {
                buf_off: 4096,
                disk_off: 4096,
                len: 4096
            }]
        );
        assert!(p[1].is_hole());
        assert_eq!(
            p.segments(&p[2]),
            vec![Segment {
                buf_off: 0,
                disk_off: 16_384,
                len: 4096
            }]
        );
    }

    #[test]
    fn adjacent_extents_merge_after_alignment() {
        let p = plan_chunks(16_384, 16_384, 4096, &[(0, 100), (200, 4097)]);
        assert_eq!(
            p.segments(&p[0]),
            vec![Segment {
                buf_off: 0,
                disk_off: 0,
                len: 8192
            }]
        );
    }

    #[test]
    fn fragmented_chunk_collapses_to_one_read() {
        let ext: Vec<(u64, u64)> = (0..40).map(|i| (i * 8192, i * 8192 + 4096)).collect();
        let p = plan_chunks(40 * 8192, 40 * 8192, 4096, &ext);
        assert_eq!(
            p.segments(&p[0]),
            vec![Segment {
                buf_off: 0,
                disk_off: 0,
                len: 39 * 8192 + 4096
            }]
        );
    }

    #[test]
    fn empty_disk_has_no_chunks() {
        assert!(plan_chunks(0, 4096, 512, &[]).is_empty());
    }
}
