//! Embeds the kernel programs built by `cargo xtask build-ebpf`. Fails with the command to run
//! when the object is missing or older than the kernel sources, so a stale data plane never
//! ships inside a fresh daemon.
use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

fn newest_mtime(path: &Path, newest: &mut SystemTime) {
    let Ok(meta) = fs::metadata(path) else { return };
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                newest_mtime(&entry.path(), newest);
            }
        }
    } else if let Ok(m) = meta.modified() {
        if m > *newest {
            *newest = m;
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest
        .parent()
        .expect("gateway/ sits in the workspace root")
        .to_path_buf();
    let object = root.join("target/ebpf/bpfel-unknown-none/release/gateway-ebpf");
    let sources = [
        root.join("gateway-ebpf/src"),
        root.join("gateway-ebpf/Cargo.toml"),
        root.join("gateway-common/src"),
    ];
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    println!("cargo:rerun-if-changed={}", object.display());

    let Ok(obj_meta) = fs::metadata(&object) else {
        panic!(
            "\n\nThe kernel programs are not built ({} is missing).\nRun `cargo xtask build-ebpf` (or `cargo xtask setup` on a fresh machine), then build again.\n\n",
            object.display()
        );
    };
    let obj_time = obj_meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let mut newest = SystemTime::UNIX_EPOCH;
    for s in &sources {
        newest_mtime(s, &mut newest);
    }
    if newest > obj_time {
        panic!(
            "\n\nThe kernel programs are stale: gateway-ebpf or gateway-common changed after {} was built.\nRun `cargo xtask build-ebpf`, then build again.\n\n",
            object.display()
        );
    }
    println!("cargo:rustc-env=CVPN_EBPF_OBJECT={}", object.display());
}
