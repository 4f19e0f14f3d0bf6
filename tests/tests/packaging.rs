//! The shipped systemd unit passes `systemd-analyze verify` (with the binary path pointed at
//! the cvpn this suite built, since it is not installed here).

use std::process::Command;

#[test]
fn systemd_unit_verifies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let unit = std::fs::read_to_string(root.join("packaging/cvpn.service")).unwrap();
    let bin = cvpn_tests::gateway::cvpn_binary().unwrap();
    let dir = cvpn_tests::gateway::TempDir::new("unit").unwrap();
    let path = dir.0.join("cvpn.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/cvpn", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("cvpn.service:"),
        "systemd-analyze verify:\n{text}"
    );
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "reload must be SIGHUP"
    );
}
