//! Read ring vs pread: read a 1 GiB file (mixed data, on a real disk, O_DIRECT) through
//! `ring::uring::UringReader` at queue depths 1/4/8/16/32 and chunk sizes 1/4 MiB, with and without
//! registered (fixed) buffers, and through the `ring::pread::PreadReader` reference.
//!
//! `cargo bench -p diskstream-benches --bench read_ring`; smoke mode (`-- --test`) uses 64 MiB.
//! Set `DISKSTREAM_BENCH_DIR` to put the data file elsewhere (never on tmpfs).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use diskstream_benches::{smoke_mode, BenchFile, MIB};
use diskstream_engine::buf::BufPool;
use diskstream_engine::ring::pread::PreadReader;
use diskstream_engine::ring::uring::UringReader;
use diskstream_engine::ring::{ReadBackend, RingOptions};
use diskstream_engine::source::{plan_chunks, Disk};

fn read_whole(backend: &mut dyn ReadBackend, src: &Disk, chunk: u32, depth: u32) -> u64 {
    let extents = src.data_extents().expect("map extents");
    let plans = plan_chunks(src.size(), chunk, src.logical_block(), &extents);
    let pool = BufPool::new(chunk as usize, depth as usize + 2);
    let stats = backend
        .read_all(src, &plans, &pool, &mut |c| {
            std::hint::black_box(&c);
            Ok(())
        })
        .expect("read");
    assert_eq!(stats.bytes_read, src.size(), "short read");
    stats.bytes_read
}

fn read_ring(c: &mut Criterion) {
    let size = if smoke_mode() { 64 * MIB as u64 } else { 1 << 30 };
    let file = BenchFile::mixed(size).expect("create bench file");
    let src = Disk::open(file.path()).expect("open source");
    if !src.is_direct() {
        eprintln!(
            "WARNING: {} is not read with O_DIRECT; numbers are page-cache numbers",
            file.path().display()
        );
    }

    let mut g = c.benchmark_group("read_ring");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(size));

    for chunk_mib in [1u32, 4] {
        let chunk = chunk_mib << 20;
        g.bench_function(BenchmarkId::new(format!("pread/{chunk_mib}MiB"), "qd1"), |b| {
            let mut r = PreadReader::new();
            b.iter(|| read_whole(&mut r, &src, chunk, 1))
        });
        for qd in [1u32, 4, 8, 16, 32] {
            for fixed in [false, true] {
                let name = format!("uring{}/{chunk_mib}MiB", if fixed { "-fixed" } else { "" });
                g.bench_function(BenchmarkId::new(name, format!("qd{qd}")), |b| {
                    let mut r = UringReader::new(RingOptions {
                        queue_depth: qd,
                        fixed_buffers: fixed,
                    })
                    .expect("io_uring");
                    b.iter(|| read_whole(&mut r, &src, chunk, qd))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, read_ring);
criterion_main!(benches);
