//! `cvpn apply -f FILE`: the real binary imports an endpoint file into a database of the
//! test's own; the same file applied twice changes nothing, a changed file makes its changes.

use std::process::Command;

use cvpn_tests::{
    gateway::{cvpn_binary, TempDir},
    pki::{write, Ca},
};

fn apply(file: &std::path::Path, data: &std::path::Path) -> (bool, String) {
    let out = Command::new(cvpn_binary().unwrap())
        .args(["apply", "-f"])
        .arg(file)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn apply_is_idempotent_and_applies_changes() {
    let dir = TempDir::new("apply").unwrap();
    let d = &dir.0;
    let mut ca = Ca::new("apply CA").unwrap();
    let server = ca.server("vpn.example.test").unwrap();
    let body = |rules: &str| {
        format!(
            "[endpoint]\nclient_cidr = \"10.77.0.0/22\"\nport = 443\nserver_cert = {:?}\nserver_key = {:?}\nclient_ca = {:?}\n\n\
             [[target_network]]\ninterface = \"eth1\"\n\n{rules}",
            write(d, "s.crt", &server.cert).unwrap(),
            write(d, "s.key", &server.key).unwrap(),
            write(d, "ca.crt", &ca.cert_pem()).unwrap(),
        )
    };
    let eng = "[[authorization_rule]]\ndestination = \"10.88.0.0/24\"\ngroup = \"engineering\"\n";
    let fin = "[[authorization_rule]]\ndestination = \"10.88.1.0/24\"\ngroup = \"finance\"\n";
    let file = write(d, "endpoint.toml", &body(eng)).unwrap();
    let data = d.join("data");

    let (ok, first) = apply(&file, &data);
    assert!(ok, "{first}");
    assert!(first.contains("created cvpn-endpoint-"), "{first}");
    let (ok, second) = apply(&file, &data);
    assert!(
        ok && second.contains("no changes"),
        "the same file twice must change nothing:\n{second}"
    );

    write(d, "endpoint.toml", &body(fin)).unwrap();
    let (ok, third) = apply(&file, &data);
    assert!(ok, "{third}");
    assert!(
        third.contains("10.88.0.0/24") && third.contains("10.88.1.0/24"),
        "one rule revoked, one authorized:\n{third}"
    );
    assert!(!third.contains("created"), "{third}");

    // A bad file is refused with the key named, and nothing changes.
    write(
        d,
        "endpoint.toml",
        &body(fin).replace("port = 443", "port = 443\nclientcidr = 1"),
    )
    .unwrap();
    let (ok, bad) = apply(&file, &data);
    assert!(!ok && bad.contains("clientcidr"), "{bad}");
}
