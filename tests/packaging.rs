//! What packaging promises: the declared `rust-version` builds everything the lock file pulls in,
//! the man pages and completion scripts come out of the binary, and the license ships.

use std::path::Path;
use std::process::Command;

mod common;

/// Parses "1.88" or "1.88.0" into a comparable triple.
fn version(v: &str) -> (u64, u64, u64) {
    let mut it = v
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or_else(|_| panic!("version {v:?}")));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

#[test]
fn rust_version_is_at_least_every_locked_packages() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            // The packages built for this Linux target (the tool is Linux-only: io_uring); a
            // fresh cargo home holds no others (Windows-only ones), and offline they cannot come.
            "--filter-platform",
            &format!("{}-unknown-linux-gnu", std::env::consts::ARCH),
            "--manifest-path",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m.as_str().expect("member id"))
        .collect();
    let mut ours = Vec::new();
    let mut highest = ((0, 0, 0), String::new());
    for p in packages {
        let name = p["name"].as_str().expect("name");
        let Some(rv) = p["rust_version"].as_str() else {
            if members.contains(&p["id"].as_str().expect("id")) {
                panic!("workspace member {name} declares no rust-version");
            }
            continue;
        };
        if members.contains(&p["id"].as_str().expect("id")) {
            ours.push((name.to_string(), version(rv)));
        } else if version(rv) > highest.0 {
            highest = (version(rv), format!("{name} {}", p["version"].as_str().unwrap_or("?")));
        }
    }
    assert!(ours.len() >= 4, "the workspace's members: {ours:?}");
    assert!(
        highest.0 >= (1, 80, 0),
        "some dependency declares a rust-version: {highest:?}"
    );
    for (name, v) in &ours {
        assert!(
            *v >= highest.0,
            "{name} declares rust-version {v:?}, below {} which needs {:?}",
            highest.1,
            highest.0
        );
    }
}

#[test]
fn man_pages_and_completions_come_from_the_binary() {
    let dir = common::scratch();
    // A symlink planted under a page's name is replaced, not written through.
    let victim = common::scratch();
    let victim = victim.path().join("victim");
    std::fs::write(&victim, "keep\n").unwrap();
    // A private target: its mode is not the page's (the page is 0644 for every reader).
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("diskstream-export.1")).unwrap();
    let out = common::ds(&["man", "--dir", dir.path().to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "keep\n",
        "the symlink's target is untouched"
    );
    let page = std::fs::symlink_metadata(dir.path().join("diskstream-export.1")).unwrap();
    assert!(page.file_type().is_file(), "the page replaced the symlink");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&page.permissions()) & 0o777,
        0o644,
        "not the mode of the symlink's target"
    );
    assert!(
        !dir.path().join("diskstream-schema.1").exists(),
        "no page for the hidden schema command"
    );
    for page in [
        "diskstream.1",
        "diskstream-export.1",
        "diskstream-image-create.1",
        "diskstream-bench.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(
            text.starts_with(".ie \\n(.g .ds Aq"),
            "{page} is roff: {}",
            &text[..40.min(text.len())]
        );
        assert!(text.contains(".SH NAME"), "{page}");
    }
    let create = std::fs::read_to_string(dir.path().join("diskstream-image-create.1")).expect("page");
    assert!(create.contains("checksum"), "the page lists the flags");
    assert!(
        !dir.path().join("diskstream-help.1").exists(),
        "no page for clap's help"
    );
    let one = common::ds(&["man"]);
    assert!(
        one.status.success() && one.stdout.starts_with(b".ie"),
        "diskstream man prints roff"
    );

    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef diskstream"),
        ("fish", "complete -c diskstream"),
    ] {
        let out = common::ds(&["completions", shell]);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        assert!(text.contains(marker), "{shell} script: {}", &text[..80.min(text.len())]);
        assert!(text.contains("verify"), "{shell} completes the image subcommands");
    }
    let bad = common::ds(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bash"),
        "the error lists the shells"
    );
}

/// `man --dir` that cannot write says which directory or page and why, never a temporary
/// file's name; `completions` into a closed pipe or a full disk exits as `man` does, without a
/// panic.
#[test]
fn man_and_completions_that_cannot_write_say_why() {
    let dir = common::scratch();
    let run = |args: &[&str]| {
        let out = common::ds(args);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let missing = dir.path().join("nope");
    let (code, err) = run(&["man", "--dir", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nope: no such directory"), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let (code, err) = run(&["man", "--dir", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("file: it is not a directory"), "{err}");
    let pages = dir.path().join("pages");
    std::fs::create_dir_all(pages.join("diskstream-pki.1")).unwrap();
    let (code, err) = run(&["man", "--dir", pages.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("pages/diskstream-pki.1: Is a directory"), "{err}");
    assert!(!err.contains(".tmp-"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A full disk.
    let full = std::fs::File::create("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(["completions", "bash"])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writing the completion script: No space left on device"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A reader that stops early (fish's script is written in many small writes).
    let mut child = Command::new(env!("CARGO_BIN_EXE_diskstream"))
        .args(["completions", "fish"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn the_declared_license_ships() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("LICENSE")).expect("LICENSE file");
    assert!(text.contains("Apache License") && text.contains("Version 2.0, January 2004"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""));
}

/// The example systemd unit stops the agent alone (`KillMode=process`): a restart of the agent
/// must not kill the instances it started, which live in its cgroup (Ganeti's node daemon's
/// unit says the same of its KVM processes); its stop signal is SIGTERM, which the agent takes
/// as an orderly stop (`tests/agents_faults.rs`). Checked with `systemd-analyze verify` where
/// that exists, on a copy whose `ExecStart` is the binary under test.
#[test]
fn the_agents_systemd_unit_stops_only_the_agent() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/diskstream-agent@.service"
    ))
    .expect("contrib/diskstream-agent@.service");
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    assert_eq!(get("KillMode"), Some("process"), "{unit}");
    assert!(get("KillSignal").is_none_or(|s| s == "SIGTERM"), "{unit}");
    assert!(get("ExecStart").is_some_and(|c| c.contains(" agent ")), "{unit}");
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not found: the unit's syntax is not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("diskstream-agent@.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/diskstream", env!("CARGO_BIN_EXE_diskstream")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !said.contains("diskstream-agent@"),
        "systemd-analyze verify: {said}"
    );
}
