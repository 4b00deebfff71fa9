//! Proof from the kernel's side that pool buffers sit in huge pages where the kernel offers them
//! (`AnonHugePages` in `/proc/self/smaps`), and that a slab is unmapped with its last buffer.
//!
//! One test function on purpose: the test binary then runs nothing else at the same time, so no
//! other thread can map memory at an address this test has just seen unmapped.

use diskstream_engine::buf::{BufPool, PoolBuf, HUGE_PAGE};

/// The mapping (start, end, AnonHugePages KiB) that holds `addr`, from /proc/self/smaps.
fn mapping_of(addr: usize) -> Option<(usize, usize, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut current = None;
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = head.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                current = (a..b).contains(&addr).then_some((a, b));
                continue;
            }
        }
        if let (Some((a, b)), Some(v)) = (current, line.strip_prefix("AnonHugePages:")) {
            let kib = v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .expect("AnonHugePages value");
            return Some((a, b, kib));
        }
    }
    None
}

#[test]
fn pool_buffers_live_in_huge_pages_and_their_slab_goes_with_the_last_one() {
    let pool = BufPool::new(1 << 20, 4);
    pool.fill();
    let bufs: Vec<PoolBuf> = (0..4).map(|_| pool.get()).collect();
    let mut addrs: Vec<usize> = bufs.iter().map(|b| b.as_slice().as_ptr() as usize).collect();
    addrs.sort_unstable();
    assert_eq!(addrs[0] % HUGE_PAGE, 0, "the slab starts on a huge page boundary");
    for w in addrs.windows(2) {
        assert_eq!(w[1] - w[0], 1 << 20, "buffers lie back to back in one slab");
    }

    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let (start, end, kib) = mapping_of(addrs[0]).expect("the slab is mapped");
    if thp.is_empty() || thp.contains("[never]") {
        eprintln!(
            "transparent huge pages are off here ({:?}): only the layout was checked",
            thp.trim()
        );
    } else {
        // THP is `always` or `madvise`: the madvised, touched 4 MiB slab is backed by huge
        // pages, which is what keeps each O_DIRECT request in one physical segment.
        assert!(
            kib >= 2048,
            "slab backed by {kib} KiB of huge pages (THP {})",
            thp.trim()
        );
    }

    // A buffer on loan keeps the slab mapped after the pool is gone; the last one unmaps it.
    let keep = bufs.into_iter().next().expect("one buffer");
    drop(pool);
    let addr = keep.as_slice().as_ptr() as usize;
    assert_eq!(
        mapping_of(addr).map(|m| (m.0, m.1)),
        Some((start, end)),
        "slab mapped while a buffer lives"
    );
    drop(keep);
    assert!(
        mapping_of(addrs[0]).is_none_or(|m| (m.0, m.1) != (start, end)),
        "slab unmapped with its last buffer"
    );
}
