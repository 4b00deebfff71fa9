//! Fuzz target: the manifest parser must reject damaged input with an error, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    diskstream_engine::fuzzing::manifest_parse(data);
});
