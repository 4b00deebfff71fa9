//! The whole pipeline into a null sink (`ops::scan`: read ring → workers → reorder-free sink that
//! only records the manifest) on a 1 GiB mixed-data file: raw (digest only) and lz4
//! (digest + lz4), for both digests, with 1 worker thread and with all cores. Smoke mode
//! (`-- --test`): 64 MiB.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use diskstream_benches::{cores, smoke_mode, BenchFile, MIB};
use diskstream_engine::digest::Checksum;
use diskstream_engine::ops::{self, Progress, ScanOptions, Tuning};

fn pipeline(c: &mut Criterion) {
    let size = if smoke_mode() { 64 * MIB as u64 } else { 1 << 30 };
    let file = BenchFile::mixed(size).expect("create bench file");
    let n = cores();

    let mut g = c.benchmark_group("pipeline_null_sink");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(size));

    for (compress, checksum) in [false, true].into_iter().flat_map(|c| Checksum::ALL.map(|s| (c, s))) {
        let mut threads = vec![1, n];
        threads.dedup();
        for t in threads {
            let opts = ScanOptions {
                compress,
                checksum,
                tuning: Tuning {
                    threads: t,
                    ..Tuning::default()
                },
                ..ScanOptions::default()
            };
            let name = if compress {
                format!("lz4+{checksum}")
            } else {
                format!("raw_{checksum}")
            };
            g.bench_function(BenchmarkId::new(name, format!("{t}threads")), |b| {
                b.iter(|| {
                    let rep = ops::scan(file.path(), &opts, &Progress::default()).expect("scan");
                    assert!(rep.input_direct, "source not read with O_DIRECT");
                    rep.bytes_stored
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
