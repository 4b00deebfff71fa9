//! `Pages::Hugetlb`: pools take the kernel's reserved hugetlb pages when enough are free, and fall
//! back to transparent huge pages (saying so through `BufPool::hugetlb`) when none are.
//!
//! The test reserves pages through `/proc/sys/vm/nr_hugepages` (root, as the whole suite) and puts
//! the old value back when it ends, panics included. One test function, so nothing else in this
//! binary runs while the system setting is changed.

use diskstream_engine::buf::{BufPool, Pages};

/// Sets `vm.nr_hugepages` and restores the value it found when dropped.
struct NrHugepages {
    old: String,
}

const KNOB: &str = "/proc/sys/vm/nr_hugepages";

impl NrHugepages {
    fn set(n: u64) -> Self {
        let old = std::fs::read_to_string(KNOB).expect("read vm.nr_hugepages");
        std::fs::write(KNOB, n.to_string()).expect("write vm.nr_hugepages (tests run as root)");
        Self { old }
    }
}

impl Drop for NrHugepages {
    fn drop(&mut self) {
        let _ = std::fs::write(KNOB, self.old.trim());
    }
}

/// `HugePages_Free` from /proc/meminfo.
fn free_huge_pages() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    info.lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("HugePages_Free in /proc/meminfo")
}

#[test]
fn hugetlb_pools_use_reserved_pages_and_fall_back_without_them() {
    let reserve = NrHugepages::set(0);
    assert_eq!(free_huge_pages(), 0);
    let pool = BufPool::with_pages(1 << 20, 4, Pages::Hugetlb);
    assert!(!pool.hugetlb(), "no hugetlb page is free: the pool must fall back");
    let mut b = pool.get();
    b.as_mut_slice()[..4].copy_from_slice(b"data");
    assert_eq!(&b.as_slice()[..4], b"data", "the fallback memory works");
    drop((b, pool));

    let eight = NrHugepages::set(8);
    let got = free_huge_pages();
    if got < 2 {
        eprintln!("the kernel could not set aside 2 huge pages (got {got}): only the fallback was checked");
        return;
    }
    let pool = BufPool::with_pages(1 << 20, 4, Pages::Hugetlb);
    assert!(pool.hugetlb(), "{got} hugetlb pages free: the pool must take them");
    pool.fill();
    assert_eq!(
        free_huge_pages(),
        got - 2,
        "a 4 MiB pool, touched, holds exactly two 2 MiB pages"
    );
    let mut bufs: Vec<_> = (0..4).map(|_| pool.get()).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        assert_eq!(b.as_mut_ptr() as usize % (1 << 20), 0);
        b.as_mut_slice().fill(i as u8);
    }
    for (i, b) in bufs.iter().enumerate() {
        assert!(b.as_slice().iter().all(|&x| x == i as u8), "buffer {i} kept its bytes");
    }
    drop((bufs, pool));
    assert_eq!(
        free_huge_pages(),
        got,
        "the pages go back when the pool and its buffers are gone"
    );

    // Thp pools never touch the reserved pages.
    let pool = BufPool::with_pages(1 << 20, 4, Pages::Thp);
    pool.fill();
    assert!(!pool.hugetlb());
    assert_eq!(free_huge_pages(), got);
    drop(pool);
    drop((eight, reserve));
}
