//! Fuzz target: the dsimg decoder must reject damaged input with an error, never panic or hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    diskstream_engine::fuzzing::image_decode(data);
});
