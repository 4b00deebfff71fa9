//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay test, so both exercise
//! exactly the same code.

use std::path::Path;

use crate::format::reader::{check_bytes, read_layout};
use crate::manifest::Manifest;

/// Decodes `data` as a whole dsimg stream and, through a file, as a random-access layout.
/// Returns whether the stream decoder accepted it.
pub fn image_decode(data: &[u8]) -> bool {
    let ok = check_bytes(data).is_ok();
    // The structural reader works on files; an anonymous memfd-free temp file keeps it honest.
    if let Ok(mut f) = tempfile_in_memory() {
        use std::io::Write;
        if f.write_all(data).is_ok() {
            let layout_ok = read_layout(&f, Path::new("<fuzz>")).is_ok();
            // Whatever the stream decoder accepts, the layout reader must accept too.
            assert!(!ok || layout_ok, "stream accepted an image the layout reader rejects");
        }
    }
    ok
}

/// Parses `data` as a manifest; if accepted, it must re-encode to exactly the same bytes.
pub fn manifest_parse(data: &[u8]) -> bool {
    match Manifest::parse(data, Path::new("<fuzz>")) {
        Ok(m) => {
            assert_eq!(m.encode().as_bytes(), data, "accepted manifest does not round-trip");
            true
        }
        Err(_) => false,
    }
}

fn tempfile_in_memory() -> std::io::Result<std::fs::File> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "diskstream-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}
