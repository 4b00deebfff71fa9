//! Temporary output names (`sink::target`): two outputs of one name written side by side in one
//! process (an agent receiving, a frontend embedding the engine) each have a file of their own,
//! a commit renames only its own writer's bytes, and the sweep of leftovers removes neither a
//! file this process is writing nor one of another live diskstream, but does remove the
//! leftovers of an earlier process that had this pid.

use std::fs;
use std::io::Write;
use std::path::Path;

use diskstream_engine::sink::target::{sweep_partials, Target};

fn write(t: &Target, bytes: &[u8]) {
    let mut f = t.file();
    f.write_all(bytes).unwrap();
}

fn partials(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect();
    v.sort();
    v
}

#[test]
fn two_outputs_of_one_name_in_one_process_keep_their_own_bytes() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("dump.raw");
    let a = Target::create(&out, false, false).unwrap();
    let b = Target::create(&out, false, false).unwrap();
    assert_ne!(a.write_path(), b.write_path(), "one temporary file for two outputs");
    assert!(a.write_path().exists(), "the second create removed the first's file");
    write(&a, b"first writer's bytes");
    write(&b, b"second");

    // A third create of the name sweeps: neither file being written here is a leftover.
    let c = Target::create(&out, false, false).unwrap();
    assert!(a.write_path().exists() && b.write_path().exists());

    assert_eq!(a.commit().unwrap(), out);
    assert_eq!(fs::read(&out).unwrap(), b"first writer's bytes");
    let (b_path, c_path) = (b.write_path().to_owned(), c.write_path().to_owned());
    assert!(b_path.exists(), "the commit took the other writer's file");
    drop(b);
    drop(c);
    assert!(
        !b_path.exists() && !c_path.exists(),
        "an unfinished output left its file"
    );
    assert_eq!(fs::read(&out).unwrap(), b"first writer's bytes");
    assert!(partials(d.path()).is_empty(), "{:?}", partials(d.path()));
}

#[test]
fn the_sweep_removes_this_pids_leftovers_but_not_its_open_files() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o.raw");
    let open = Target::create(&out, false, false).unwrap();
    let pid = std::process::id();
    // Leftovers of an earlier process that had this pid: today's name and 0.1.0's.
    let leftovers = [format!(".o.raw.partial-{pid}-999999"), format!(".o.raw.partial-{pid}")];
    // Not our pattern: kept whatever the pid.
    let foreign = [
        format!(".o.raw.partial-{pid}-"),
        format!(".o.raw.partial-{pid}-x"),
        format!(".o.raw.partial--{pid}"),
        format!(".o.raw.partial-{pid}-1-2"),
    ];
    for n in leftovers.iter().chain(&foreign) {
        fs::write(d.path().join(n), b"old").unwrap();
    }
    let removed = sweep_partials(&out);
    let mut names: Vec<String> = removed
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want = leftovers.to_vec();
    want.sort();
    assert_eq!(names, want);
    assert!(
        open.write_path().exists(),
        "the sweep removed a file this process is writing"
    );
    for n in &foreign {
        assert!(d.path().join(n).exists(), "{n} was swept");
    }
    write(&open, b"new");
    open.commit().unwrap();
    assert_eq!(fs::read(&out).unwrap(), b"new");
}
