//! Adversarial tests of what `diskstream image` writes to and reads from, from a report-only
//! review of the engine's sources and targets. Each failed before its fix: a loop device whose
//! backing file's name was removed while another hard link remained (restore overwrote its own
//! image through it).
//!
//! Needs root (loop devices).

mod common;

use std::path::Path;

use common::*;

const MIB: u64 = 1 << 20;

fn sha(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).expect("read")).to_vec()
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_loop_device_over_another_link_of_the_other_end_is_refused() {
    let dir = scratch();
    let d = dir.path();
    let src = d.join("src");
    make_disk(&src, 8 * MIB, Data::Random, 21);
    // restore T2 onto a loop device over T, T2 being T's other hard link and T's name removed:
    // the loop device writes T2's blocks as restore reads them.
    let (t, t2) = (d.join("t.ds"), d.join("t2.ds"));
    ds_json(&[
        "image",
        "create",
        s(&src),
        s(&t),
        "--format",
        "dsimg",
        "--compress",
        "none",
    ]);
    std::fs::hard_link(&t, &t2).unwrap();
    let before = sha(&t2);
    let lo = Loop::attach(&t, false);
    std::fs::remove_file(&t).unwrap();
    let r = ds(&["image", "restore", s(&t2), lo.path(), "-f"]);
    assert!(!r.status.success(), "restore onto a loop device over its own image");
    assert!(stderr_of(&r).contains("is the input"), "{}", stderr_of(&r));
    drop(lo);
    assert_eq!(sha(&t2), before, "the image changed");
    // create from a loop device over R onto R2, R's other hard link, R's name removed.
    let (raw, raw2) = (d.join("r.raw"), d.join("r2.raw"));
    ds_json(&["image", "create", s(&src), s(&raw)]);
    std::fs::hard_link(&raw, &raw2).unwrap();
    let lo = Loop::attach(&raw, false);
    std::fs::remove_file(&raw).unwrap();
    let r = ds(&["image", "create", lo.path(), s(&raw2), "-f"]);
    assert!(!r.status.success(), "create from a loop device onto its backing file");
    assert!(stderr_of(&r).contains("is the input"), "{}", stderr_of(&r));
    // The removed name is no longer the loop device's file: a new file there is another file.
    ds_json(&["image", "create", lo.path(), s(&raw), "-f"]);
    drop(lo);
    assert_eq!(sha(&raw), sha(&src));
    assert_eq!(sha(&raw2), sha(&src), "the backing file changed");
}
