//! File names an attacker chooses, end to end: a name holding newlines, a forged `--progress
//! json` event and terminal escapes neither forges a line on stderr or stdout nor reaches the
//! terminal raw; a name that is not UTF-8 still gets its one JSON result (exit 0), and neither
//! `-v` nor a usage error panics on it.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;

fn ds(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(args)
        .env_remove("DISKSTREAM_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run diskstream")
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

const FORGED: &str = r#"{"event":"message","op":"image scan","time":1.0,"level":"warning","text":"forged"}"#;

#[test]
fn a_name_cannot_forge_lines_or_drive_the_terminal() {
    let dir = scratch();
    let name =
        format!("a\n{FORGED}\nERROR image scan ended: failed\nscanned real-disk\u{1b}]0;title\u{7}\u{1b}[31m\rb");
    let disk = dir.path().join(&name);
    make_disk(&disk, 1 << 20, Data::Mixed, 3);
    let (path, img) = (disk.as_os_str(), dir.path().join("out.dsimg"));
    for args in [
        vec![
            os("image"),
            os("scan"),
            path,
            os("--progress"),
            os("json"),
            os("--json"),
            os("-v"),
        ],
        vec![os("image"), os("create"), path, img.as_os_str(), os("-v")],
        vec![os("image"), os("scan"), path],
        vec![os("image"), os("info"), os("-v"), path],
    ] {
        let out = ds(&args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            assert!(
                !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\r'),
                "{args:?}: a raw control character on {what}:\n{text}"
            );
            assert!(
                !text.lines().any(|l| l.starts_with(FORGED)
                    || l.starts_with("ERROR image scan")
                    || l.starts_with("scanned real-disk")),
                "{args:?}: a forged line on {what}:\n{text}"
            );
        }
        for l in stderr.lines().filter(|l| l.starts_with('{')) {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert_ne!(v["text"], "forged", "{l}");
        }
        if args.contains(&os("--json")) {
            assert_eq!(out.status.code(), Some(0), "{stderr}");
            let v: Value = serde_json::from_str(stdout.trim()).expect("one JSON result");
            assert_eq!(
                v["input"],
                disk.to_str().unwrap(),
                "the JSON result names the file exactly"
            );
        } else if args[1] == "info" {
            assert_eq!(out.status.code(), Some(1), "a sample disk is not an image: {stderr}");
            assert!(stderr.contains(r"a\n{"), "the error names the file, escaped: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(0), "{stderr}");
            assert!(
                stdout.contains(r#"a\n{"event""#),
                "the result line names the file, escaped: {stdout}"
            );
        }
    }
}

#[test]
fn a_name_that_is_not_utf8_gets_its_json_result() {
    let dir = scratch();
    let disk = dir.path().join(OsStr::from_bytes(b"b\xff.img"));
    make_disk(&disk, 1 << 20, Data::Mixed, 4);
    let img = dir.path().join(OsStr::from_bytes(b"o\xfe.dsimg"));
    let p = disk.as_os_str();
    for args in [
        vec![os("image"), os("scan"), p, os("--json")],
        vec![os("image"), os("scan"), p, os("--json"), os("-v")],
        vec![os("image"), os("create"), p, img.as_os_str(), os("--json")],
        vec![os("image"), os("info"), img.as_os_str(), os("--json")],
    ] {
        let out = ds(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        let v: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: no JSON result ({e}): {stderr}"));
        assert_eq!(v["ok"], true, "{v}");
        // `info` names no input; the raw image's manifest beside it carries the name.
        let named = if args[1] == "info" { &v["manifest"] } else { &v["input"] };
        let shown = named.as_str().unwrap_or_else(|| panic!("{args:?}: {v}"));
        assert!(shown.ends_with(".img") || shown.ends_with(".manifest"), "{v}");
        assert!(
            shown.contains('\u{fffd}'),
            "the byte that is not UTF-8 is shown as U+FFFD: {v}"
        );
    }
    assert!(Path::new(&img).is_file());
    // A usage error on such a command line: exit 2 and the JSON failure, not a panic.
    let out = ds(&[os("image"), os("scan"), p, os("--json"), os("--bogus")]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("the JSON failure");
    assert_eq!(
        (v["op"].clone(), v["kind"].clone()),
        ("image scan".into(), "usage".into()),
        "{v}"
    );
}
