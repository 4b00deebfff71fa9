//! Per-chunk compute kernels on chunks of the engine's default size, 1 thread: the chunk digests
//! (BLAKE3 and SHA-256, `Checksum::digest`), lz4_flex block compress and decompress, zero
//! detection (`digest::is_zero`), and the worker kernel (`pipeline::kernel`: zero check + digest
//! + lz4) for both digests on 1 thread and on all cores over disjoint chunks.
//!
//! Data kinds (64 MiB each, more than the L3, so every pass streams from DRAM): `random`
//! (incompressible), `zero`, `mixed` (the first 64 MiB of `tar -cf - -C / usr`, or the engine's
//! sample content when tar is unavailable). Smoke mode (`-- --test`) uses 8 MiB.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use diskstream_benches::{
    cores, lz4_out_buf, mixed_data, random_data, smoke_mode, worker_pass, WorkerState, CHUNK, MIB,
};
use diskstream_engine::digest::{is_zero, Checksum};

fn kernels(c: &mut Criterion) {
    let len = if smoke_mode() { 8 * MIB } else { 64 * MIB };
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("random", random_data(len)),
        ("zero", vec![0u8; len]),
        ("mixed", mixed_data(len)),
    ];
    let n = cores();

    let mut g = c.benchmark_group("kernels");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(len as u64));

    for (kind, data) in &inputs {
        let data = data.as_slice();
        for sum in Checksum::ALL {
            g.bench_function(BenchmarkId::new(sum.name(), kind), |b| {
                b.iter(|| data.chunks(CHUNK).map(|c| sum.digest(c)[0]).fold(0u8, |a, x| a ^ x))
            });
        }
        g.bench_function(BenchmarkId::new("is_zero", kind), |b| {
            b.iter(|| data.chunks(CHUNK).filter(|c| is_zero(c)).count())
        });
        let mut out = lz4_out_buf();
        g.bench_function(BenchmarkId::new("lz4_compress", kind), |b| {
            b.iter(|| {
                data.chunks(CHUNK)
                    .map(|c| lz4_flex::block::compress_into(c, &mut out).expect("lz4"))
                    .sum::<usize>()
            })
        });
        // Compressed chunks, then decompress them into one reused buffer.
        let compressed: Vec<Vec<u8>> = data.chunks(CHUNK).map(lz4_flex::block::compress).collect();
        let ratio = len as f64 / compressed.iter().map(Vec::len).sum::<usize>() as f64;
        eprintln!("kernels/{kind}: lz4 block ratio {ratio:.3}");
        let mut plain = vec![0u8; CHUNK];
        g.bench_function(BenchmarkId::new("lz4_decompress", kind), |b| {
            b.iter(|| {
                compressed
                    .iter()
                    .map(|z| lz4_flex::block::decompress_into(z, &mut plain).expect("lz4"))
                    .sum::<usize>()
            })
        });
        for sum in Checksum::ALL {
            let mut states = vec![WorkerState::new()];
            g.bench_function(BenchmarkId::new(format!("worker_{sum}/1thread"), kind), |b| {
                b.iter(|| worker_pass(data, sum, &mut states))
            });
            let mut states: Vec<WorkerState> = (0..n).map(|_| WorkerState::new()).collect();
            g.bench_function(BenchmarkId::new(format!("worker_{sum}/{n}threads"), kind), |b| {
                b.iter(|| worker_pass(data, sum, &mut states))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
