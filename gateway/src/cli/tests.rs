//! The CLI driven in-process ([`run_with`]) against the API on a Unix socket in a temporary
//! directory (and on a TLS listener), over a temporary store.

use clap::{CommandFactory, Parser};
use serde_json::Value;

use super::*;
use crate::api::tests::{Daemon, TempDir, TlsDaemon};
use crate::api::{ControlEvent, EndpointChange};
use crate::model::EndpointStatus;

/// What a CLI run printed and returned.
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "exit {}; stderr: {}", self.code, self.err);
        &self.out
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }
}

/// Runs `cvpn ARGS…` in-process; the socket of `d` is appended unless `args` name one.
fn cvpn_at(socket: Option<&Path>, args: &[&str]) -> anyhow::Result<Run> {
    let mut argv = vec!["cvpn".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    if let Some(s) = socket {
        argv.push("--socket".into());
        argv.push(s.display().to_string());
    }
    let cli = CliArgs::try_parse_from(&argv).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_with(cli.command, &mut out, &mut err)?;
    Ok(Run {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    })
}

fn cvpn(d: &Daemon, args: &[&str]) -> Run {
    cvpn_at(Some(&d.socket), args).unwrap()
}

/// Writes the PKI's files; returns (dir, server cert, server key, client CA).
fn pki_files(d: &Daemon) -> (TempDir, String, String, String) {
    let dir = TempDir::new("cli-pki");
    let cert = dir.write("server.pem", &d.pki.server_cert);
    let key = dir.write("server.key", &d.pki.server_key);
    let ca = dir.write("ca.pem", &d.pki.ca_pem);
    let s = |p: PathBuf| p.display().to_string();
    (dir, s(cert), s(key), s(ca))
}

fn create(d: &Daemon, extra: &[&str]) -> Run {
    let (_dir, cert, key, ca) = pki_files(d);
    let mut args = vec![
        "endpoint",
        "create",
        "--client-cidr",
        "10.2.0.0/22",
        "--server-cert",
        &cert,
        "--server-key",
        &key,
        "--client-ca",
        &ca,
    ];
    args.extend_from_slice(extra);
    cvpn(d, &args)
}

#[test]
fn cli_manages_every_resource_end_to_end() {
    let mut d = Daemon::start();

    // endpoint create (json output: the API's endpoint).
    let v = create(
        &d,
        &[
            "--dns-server",
            "10.88.0.2",
            "--split-tunnel",
            "--description",
            "office",
            "--tag",
            "team=net",
            "-o",
            "json",
        ],
    )
    .json();
    let eid = v["client-vpn-endpoint-id"].as_str().unwrap().to_string();
    assert_eq!(v["status"], "pending-associate");
    assert_eq!(v["split-tunnel"], true);
    assert_eq!(v["dns-servers"][0], "10.88.0.2");
    assert_eq!(v["tags"][0]["key"], "team");
    assert_eq!(
        d.drain_events(),
        vec![ControlEvent::EndpointChanged {
            endpoint_id: eid.clone(),
            change: EndpointChange::Created
        }]
    );

    // endpoint describe: table and json.
    let t = cvpn(&d, &["endpoint", "describe"]);
    let lines: Vec<&str> = t.ok().lines().collect();
    assert_eq!(lines.len(), 2, "{}", t.out);
    assert!(lines[0].starts_with("ENDPOINT ID"), "{}", t.out);
    assert!(lines[0].contains("STATUS") && lines[0].contains("CLIENT CIDR"));
    assert!(lines[1].starts_with(&eid));
    assert!(
        lines[1].contains("pending-associate")
            && lines[1].contains("10.2.0.0/22")
            && lines[1].contains("office")
    );
    let j = cvpn(&d, &["endpoint", "describe", &eid, "--output", "json"]).json();
    assert_eq!(
        j["client-vpn-endpoints"][0]["client-vpn-endpoint-id"],
        eid.as_str()
    );

    // endpoint modify.
    let t = cvpn(
        &d,
        &[
            "endpoint",
            "modify",
            &eid,
            "--port",
            "1194",
            "--connection-log-stdout",
        ],
    );
    assert!(
        t.ok().contains("changed: vpn-port, connection-log-options"),
        "{}",
        t.out
    );
    let ep = d.store.describe_endpoint(&eid).unwrap();
    assert_eq!(ep.vpn_port, 1194);
    assert!(ep.connection_log_options.enabled && ep.connection_log_options.stdout);
    assert!(cvpn(&d, &["endpoint", "modify", &eid, "--port", "1194"])
        .ok()
        .contains("no change"));
    d.drain_events();

    // network associate / describe.
    let t = cvpn(
        &d,
        &[
            "network",
            "associate",
            &eid,
            "--interface",
            "lo",
            "--subnet",
            "10.88.0.0/24",
        ],
    );
    let out = t.ok();
    assert!(out.starts_with("ASSOCIATION ID"), "{out}");
    assert!(out.contains("route added: 10.88.0.0/24 via lo"), "{out}");
    assert!(out.contains("endpoint status: available"), "{out}");
    let nets = cvpn(&d, &["network", "describe", &eid, "-o", "json"]).json();
    let assoc = nets["client-vpn-target-networks"][0]["association-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.drain_events(),
        vec![
            ControlEvent::PolicyChanged {
                endpoint_id: eid.clone()
            },
            ControlEvent::EndpointChanged {
                endpoint_id: eid.clone(),
                change: EndpointChange::Status {
                    status: EndpointStatus::Available
                }
            },
        ]
    );

    // rule authorize / describe / revoke.
    cvpn(
        &d,
        &[
            "rule",
            "authorize",
            &eid,
            "--destination",
            "10.88.0.0/24",
            "--all-groups",
        ],
    )
    .ok();
    cvpn(
        &d,
        &[
            "rule",
            "authorize",
            &eid,
            "--destination",
            "10.88.0.128/25",
            "--group",
            "eng",
            "--description",
            "eng only",
        ],
    )
    .ok();
    let t = cvpn(&d, &["rule", "describe", &eid]);
    let out = t.ok();
    assert!(
        out.contains("10.88.0.0/24") && out.contains("(all groups)"),
        "{out}"
    );
    assert!(
        out.contains("10.88.0.128/25") && out.contains("eng only"),
        "{out}"
    );
    let j = cvpn(&d, &["rule", "describe", &eid, "-o", "json"]).json();
    assert_eq!(j["authorization-rules"].as_array().unwrap().len(), 2);
    cvpn(
        &d,
        &[
            "rule",
            "revoke",
            &eid,
            "--destination",
            "10.88.0.128/25",
            "--group",
            "eng",
        ],
    )
    .ok();
    assert_eq!(d.store.describe_rules(&eid).unwrap().len(), 1);

    // route create / describe / delete.
    cvpn(
        &d,
        &[
            "route",
            "create",
            &eid,
            "--destination",
            "10.99.0.0/16",
            "--interface",
            "lo",
            "--description",
            "lab",
        ],
    )
    .ok();
    let out = cvpn(&d, &["route", "describe", &eid]).out;
    assert!(
        out.contains("10.99.0.0/16") && out.contains("add-route") && out.contains("lab"),
        "{out}"
    );
    assert!(
        out.contains("10.88.0.0/24") && out.contains("associate"),
        "{out}"
    );
    cvpn(
        &d,
        &["route", "delete", &eid, "--destination", "10.99.0.0/16"],
    )
    .ok();
    assert_eq!(d.store.describe_routes(&eid).unwrap().len(), 1);
    assert_eq!(
        d.drain_events(),
        vec![
            ControlEvent::PolicyChanged {
                endpoint_id: eid.clone()
            };
            5
        ]
    );

    // connection list / terminate by id and by username.
    let a1 = d.connect(&eid, "alice", 2);
    let a2 = d.connect(&eid, "alice", 3);
    let b1 = d.connect(&eid, "bob", 4);
    let out = cvpn(&d, &["connection", "list", &eid]).out;
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.contains(&a1)
            && out.contains("alice")
            && out.contains("10.2.0.2")
            && out.contains("192.0.2.2:50000/udp"),
        "{out}"
    );
    let j = cvpn(
        &d,
        &[
            "connection",
            "list",
            &eid,
            "--username",
            "bob",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(j["connections"][0]["connection-id"], b1.as_str());
    let out = cvpn(
        &d,
        &["connection", "terminate", &eid, "--connection-id", &b1],
    )
    .out;
    assert!(
        out.contains(&b1) && out.contains("active") && out.contains("terminating"),
        "{out}"
    );
    let j = cvpn(
        &d,
        &[
            "connection",
            "terminate",
            &eid,
            "--username",
            "alice",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(j["connection-statuses"].as_array().unwrap().len(), 2);
    assert_eq!(
        d.drain_events(),
        vec![
            ControlEvent::Terminate {
                endpoint_id: eid.clone(),
                connection_ids: vec![b1.clone()]
            },
            ControlEvent::Terminate {
                endpoint_id: eid.clone(),
                connection_ids: vec![a1.clone(), a2.clone()]
            },
        ]
    );
    let out = cvpn(&d, &["connection", "list", &eid, "--status", "active"]).out;
    assert_eq!(out.lines().count(), 1, "{out}");

    // config export, with the user's own certificate and key appended.
    let out = cvpn(
        &d,
        &["config", "export", &eid, "--remote-host", "vpn.example.com"],
    )
    .ok()
    .to_string();
    assert!(out.contains("remote vpn.example.com 1194\n"), "{out}");
    assert!(out.contains("<ca>\n-----BEGIN CERTIFICATE-----"), "{out}");
    assert!(out.contains(d.pki.ca_pem.trim()));
    let files = TempDir::new("cli-client");
    let cert = files.write("c.pem", "CERT");
    let key = files.write("c.key", "KEY");
    let out = cvpn(
        &d,
        &[
            "config",
            "export",
            &eid,
            "--remote-host",
            "h",
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    )
    .ok()
    .to_string();
    assert!(
        out.ends_with("</ca>\n<cert>\nCERT\n</cert>\n<key>\nKEY\n</key>\n"),
        "{out}"
    );
    let j = cvpn(
        &d,
        &["config", "export", &eid, "--remote-host", "h", "-o", "json"],
    )
    .json();
    assert!(j["client-configuration"].as_str().unwrap().contains("<ca>"));

    // crl import / export round trip.
    let pem = d.pki.crl(&[7, 8, 9]);
    let crl_file = files.write("crl.pem", &pem);
    let out = cvpn(
        &d,
        &[
            "crl",
            "import",
            &eid,
            "--file",
            &crl_file.display().to_string(),
        ],
    )
    .ok()
    .to_string();
    assert!(
        out.contains(&eid) && out.lines().nth(1).unwrap().split_whitespace().last() == Some("3"),
        "{out}"
    );
    assert_eq!(cvpn(&d, &["crl", "export", &eid]).ok(), pem);
    let j = cvpn(&d, &["crl", "export", &eid, "-o", "json"]).json();
    assert_eq!(j["certificate-revocation-list"], pem.as_str());
    assert!(
        matches!(d.drain_events().as_slice(), [ControlEvent::CrlChanged { revoked_serials, .. }] if revoked_serials.len() == 3)
    );

    // network disassociate, endpoint delete.
    let out = cvpn(&d, &["network", "disassociate", &eid, &assoc])
        .ok()
        .to_string();
    assert!(
        out.contains("disassociated") && out.contains("endpoint status: pending-associate"),
        "{out}"
    );
    let out = cvpn(&d, &["endpoint", "delete", &eid]).ok().to_string();
    assert!(out.contains("deleting"), "{out}");
}

#[test]
fn cli_failures_print_the_api_error_and_exit_nonzero() {
    let d = Daemon::start();
    let r = create(&d, &["--port", "8443"]);
    assert_eq!(r.code, 1);
    assert!(r.out.is_empty());
    assert!(
        r.err.starts_with("InvalidParameterValue: vpn-port: "),
        "{}",
        r.err
    );

    let r = cvpn(
        &d,
        &["endpoint", "describe", "cvpn-endpoint-00000000000000000"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.err.starts_with("InvalidClientVpnEndpointId.NotFound: "),
        "{}",
        r.err
    );

    let r = cvpn(&d, &["endpoint", "describe", "nope", "-o", "json"]);
    assert_eq!(r.code, 1);
    assert!(
        r.err
            .starts_with("InvalidParameterValue: client-vpn-endpoint-id"),
        "{}",
        r.err
    );

    let eid = create(&d, &["-o", "json"]).json()["client-vpn-endpoint-id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = cvpn(
        &d,
        &[
            "route",
            "create",
            &eid,
            "--destination",
            "10.2.0.0/24",
            "--interface",
            "lo",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(!r.err.is_empty());
    let r = cvpn(&d, &["config", "export", &eid]);
    assert_eq!(r.code, 1);
    assert!(
        r.err.starts_with("MissingParameter: remote-host: "),
        "{}",
        r.err
    );

    // An unreachable API is an error (the binary exits 1 with it), not an exit code.
    let dir = TempDir::new("nosock");
    let e = cvpn_at(
        Some(&dir.path().join("none.sock")),
        &["endpoint", "describe"],
    )
    .err()
    .unwrap();
    assert!(
        format!("{e:#}").contains("cannot reach the cvpn API"),
        "{e:#}"
    );
    // Unreadable files too.
    let e = cvpn_at(
        Some(&d.socket),
        &[
            "endpoint",
            "create",
            "--client-cidr",
            "10.2.0.0/22",
            "--server-cert",
            "/nonexistent",
            "--server-key",
            "/x",
            "--client-ca",
            "/y",
        ],
    )
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("/nonexistent"), "{e:#}");
}

#[test]
fn cli_talks_to_the_tls_listener_with_a_token() {
    let t = TlsDaemon::start();
    let ca = t.ca_file.display().to_string();
    let url = t.url();
    let wrong = cvpn_at(
        None,
        &[
            "endpoint",
            "describe",
            "--api",
            &url,
            "--ca-cert",
            &ca,
            "--token",
            "nope",
        ],
    )
    .unwrap();
    assert_eq!(wrong.code, 1);
    assert!(wrong.err.starts_with("AuthFailure: "), "{}", wrong.err);
    let right = cvpn_at(
        None,
        &[
            "endpoint",
            "describe",
            "--api",
            &url,
            "--ca-cert",
            &ca,
            "--token",
            &t.token,
        ],
    )
    .unwrap();
    assert_eq!(right.ok().trim(), right.out.lines().next().unwrap().trim());
    assert!(right.out.starts_with("ENDPOINT ID"));
    let e = cvpn_at(
        None,
        &["endpoint", "describe", "--api", "http://x", "--token", "t"],
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("expected https://"), "{e}");
}

#[test]
fn cli_help_explains_every_flag_and_command() {
    fn walk(cmd: &clap::Command, path: &str) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                a.get_help()
                    .is_some_and(|h| !h.to_string().trim().is_empty()),
                "{path}: argument {id} has no help"
            );
        }
        for s in cmd.get_subcommands() {
            if s.get_name() == "help" {
                continue;
            }
            let p = format!("{path} {}", s.get_name());
            assert!(s.get_about().is_some(), "{p} has no help");
            walk(s, &p);
        }
    }
    let mut cmd = CliArgs::command();
    cmd.clone().debug_assert();
    cmd.build();
    walk(&cmd, "cvpn");
    let groups: Vec<&str> = cmd
        .get_subcommands()
        .map(|s| s.get_name())
        .filter(|n| *n != "help")
        .collect();
    assert_eq!(
        groups,
        [
            "endpoint",
            "network",
            "route",
            "rule",
            "connection",
            "config",
            "crl",
            "directory",
            "mfa",
            "idp",
            "security-group",
            "access-key"
        ]
    );
    let help = cmd
        .find_subcommand("endpoint")
        .and_then(|c| c.find_subcommand("create"))
        .unwrap()
        .clone()
        .render_long_help()
        .to_string();
    for flag in [
        "--client-cidr",
        "--server-cert",
        "--socket",
        "--output",
        "--api",
        "--token",
        "--dns-server",
        "--split-tunnel",
    ] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
}

#[test]
fn cli_takes_global_flags_anywhere_after_the_resource() {
    let a = CliArgs::try_parse_from([
        "cvpn", "endpoint", "--output", "json", "describe", "--socket", "/s",
    ])
    .unwrap();
    let ResourceCommand::Endpoint { api, .. } = a.command else {
        panic!()
    };
    assert_eq!(api.output, Output::Json);
    assert_eq!(api.socket, PathBuf::from("/s"));
    let a = CliArgs::try_parse_from([
        "cvpn",
        "connection",
        "terminate",
        "cvpn-endpoint-0",
        "--username",
        "u",
    ])
    .unwrap();
    let ResourceCommand::Connection { api, .. } = a.command else {
        panic!()
    };
    assert_eq!(api.socket, PathBuf::from(DEFAULT_SOCKET_PATH));
    assert_eq!(api.output, Output::Table);
    // terminate needs exactly one target; rule needs a group or --all-groups.
    assert!(CliArgs::try_parse_from(["cvpn", "connection", "terminate", "e"]).is_err());
    assert!(CliArgs::try_parse_from([
        "cvpn",
        "connection",
        "terminate",
        "e",
        "--username",
        "u",
        "--connection-id",
        "c"
    ])
    .is_err());
    assert!(CliArgs::try_parse_from([
        "cvpn",
        "rule",
        "authorize",
        "e",
        "--destination",
        "10.0.0.0/8"
    ])
    .is_err());
}

#[test]
fn cli_encodes_path_segments_and_query_values() {
    assert_eq!(enc("cvpn-endpoint-0a"), "cvpn-endpoint-0a");
    assert_eq!(enc("a/b c?&="), "a%2Fb%20c%3F%26%3D");
    assert_eq!(
        with_query(
            "/p".into(),
            &[("a", Some("x y")), ("b", None), ("c", Some("1"))]
        ),
        "/p?a=x%20y&c=1"
    );
}

#[test]
fn cli_json_output_keeps_the_api_order() {
    let raw = r#"{"b":1,"a":[],"c":{},"d":[{"x":"q\"{,}[]:"},true,null,-1.5e3],"e":"\\"}"#;
    let pretty = pretty_json(raw.as_bytes());
    assert_eq!(
        serde_json::from_str::<Value>(&pretty).unwrap(),
        serde_json::from_str::<Value>(raw).unwrap()
    );
    assert!(
        pretty.find("\"b\"").unwrap() < pretty.find("\"a\"").unwrap(),
        "{pretty}"
    );
    assert!(pretty.contains("\"a\": [],\n"), "{pretty}");
    assert!(pretty.contains("\"x\": \"q\\\"{,}[]:\""), "{pretty}");
    assert!(pretty.starts_with("{\n  \"b\": 1,\n"), "{pretty}");
}

/// How the binary embeds the resource commands next to its own (`serve`, `check`).
#[test]
fn cli_resource_commands_flatten_into_the_binary_commands() {
    #[derive(Debug, Parser)]
    struct Bin {
        #[command(subcommand)]
        command: BinCommand,
    }
    #[derive(Debug, clap::Subcommand)]
    enum BinCommand {
        /// Runs the daemon.
        Serve {
            /// Config file.
            #[arg(long)]
            config: PathBuf,
        },
        // Boxed: the resource commands are much larger than the binary's own.
        #[command(flatten)]
        Resource(Box<ResourceCommand>),
    }
    let b = Bin::try_parse_from(["cvpn", "route", "describe", "cvpn-endpoint-0", "-o", "json"])
        .unwrap();
    let BinCommand::Resource(r) = b.command else {
        panic!("not a resource command")
    };
    assert!(matches!(
        *r,
        ResourceCommand::Route {
            api: ApiOptions {
                output: Output::Json,
                ..
            },
            ..
        }
    ));
    let b = Bin::try_parse_from(["cvpn", "serve", "--config", "x"]).unwrap();
    assert!(matches!(b.command, BinCommand::Serve { .. }));
    Bin::command().debug_assert();
}

#[test]
fn cli_idp_create_needs_one_protocol_and_endpoint_takes_idp_or_directory() {
    let parse = |args: &[&str]| CliArgs::try_parse_from(args.iter().copied());
    // One protocol's flags, at least one.
    assert!(parse(&["cvpn", "idp", "create", "--name", "n"]).is_err());
    assert!(parse(&[
        "cvpn",
        "idp",
        "create",
        "--name",
        "n",
        "--oidc-issuer",
        "https://a",
        "--saml-metadata",
        "m.xml"
    ])
    .is_err());
    let a = parse(&[
        "cvpn",
        "idp",
        "create",
        "--name",
        "n",
        "--oidc-issuer",
        "https://a",
        "--client-id",
        "c",
        "--client-secret-file",
        "s",
        "--scope",
        "groups",
        "--scope",
        "offline_access",
        "--recheck-minutes",
        "10",
    ])
    .unwrap();
    let ResourceCommand::Idp {
        action: identity_provider::IdpCommand::Create { name, settings },
        ..
    } = a.command
    else {
        panic!()
    };
    assert_eq!(name, "n");
    assert_eq!(settings.scopes, ["groups", "offline_access"]);
    assert_eq!(settings.recheck_minutes, Some(10));
    for cmd in [
        vec!["cvpn", "idp", "list"],
        vec!["cvpn", "idp", "describe"],
        vec!["cvpn", "idp", "describe", "corp"],
        vec!["cvpn", "idp", "delete", "corp"],
        vec![
            "cvpn",
            "idp",
            "modify",
            "corp",
            "--groups-attribute",
            "groups",
        ],
    ] {
        parse(&cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    }
    // endpoint create: --idp stands in for --client-ca, not with --directory.
    let base = [
        "cvpn",
        "endpoint",
        "create",
        "--client-cidr",
        "10.2.0.0/22",
        "--server-cert",
        "c",
        "--server-key",
        "k",
    ];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        parse(&v)
    };
    assert!(with(&[]).is_err(), "no authentication");
    with(&["--idp", "corp"]).unwrap();
    with(&[
        "--idp",
        "corp",
        "--client-ca",
        "ca",
        "--self-service-portal",
        "enabled",
    ])
    .unwrap();
    assert!(with(&["--idp", "corp", "--directory", "d"]).is_err());
    assert!(with(&["--idp", "corp", "--self-service-portal", "on"]).is_err());
    parse(&[
        "cvpn",
        "endpoint",
        "modify",
        "e",
        "--self-service-portal",
        "disabled",
    ])
    .unwrap();
}

#[test]
fn cli_idp_create_describe_modify_delete_and_a_federated_endpoint() {
    let mut d = Daemon::start();
    let dir = TempDir::new("cli-idp");
    let secret = dir.write("secret", "cli-s3cret\n");
    let (xml, _) = crate::test_support::saml_metadata("urn:cli", "https://idp.test/sso");
    let md = dir.write("md.xml", &xml);
    let s = |p: &PathBuf| p.display().to_string();
    let out = cvpn(
        &d,
        &[
            "idp",
            "create",
            "--name",
            "corp",
            "--oidc-issuer",
            "https://login.example.test",
            "--client-id",
            "cvpn",
            "--client-secret-file",
            &s(&secret),
        ],
    );
    let id = out.ok().trim().to_string();
    assert!(
        crate::model::is_valid_id(crate::model::IDP_ID_PREFIX, &id),
        "{id}"
    );
    let saml_id = cvpn(
        &d,
        &[
            "idp",
            "create",
            "--name",
            "sso2",
            "--saml-metadata",
            &s(&md),
            "--username-attribute",
            "uid",
        ],
    )
    .ok()
    .trim()
    .to_string();
    let list = cvpn(&d, &["idp", "list"]);
    let text = list.ok();
    assert!(
        text.contains(&id) && text.contains(&saml_id) && text.contains("urn:cli"),
        "{text}"
    );
    assert!(!text.contains("cli-s3cret"), "{text}");
    let json = cvpn(&d, &["idp", "describe", "corp", "-o", "json"]).json();
    assert_eq!(json["client-secret-set"], true);
    assert!(!json.to_string().contains("cli-s3cret"));
    d.drain_events();
    let m = cvpn(
        &d,
        &[
            "idp",
            "modify",
            "corp",
            "--groups-claim",
            "roles",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(m["oidc"]["groups-claim"], "roles");
    assert_eq!(
        d.drain_events(),
        vec![ControlEvent::IdentityProviderChanged { id: id.clone() }]
    );
    // A refused modify prints the code and exits 1.
    let r = cvpn(&d, &["idp", "modify", "corp", "--groups-attribute", "x"]);
    assert_eq!(r.code, 1);
    assert!(r.err.contains("InvalidParameterCombination"), "{}", r.err);
    // An endpoint named by the provider's name, with the portal.
    let (_pki, cert, key, _ca) = pki_files(&d);
    let chain = dir.write(
        "chain.pem",
        &format!("{}{}", d.pki.server_cert, d.pki.ca_pem),
    );
    let _ = cert;
    let ep = cvpn(
        &d,
        &[
            "endpoint",
            "create",
            "--client-cidr",
            "10.9.0.0/22",
            "--server-cert",
            &s(&chain),
            "--server-key",
            &key,
            "--idp",
            "corp",
            "--self-service-portal",
            "enabled",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(ep["self-service-portal"], true);
    assert_eq!(
        ep["authentication-options"][0]["saml-provider-arn"],
        id.as_str()
    );
    let r = cvpn(&d, &["idp", "delete", "corp"]);
    assert_eq!(r.code, 1);
    assert!(r.err.contains("IncorrectState"), "{}", r.err);
    assert_eq!(
        cvpn(&d, &["idp", "delete", "sso2"]).ok(),
        format!("deleted {saml_id}\n")
    );
}

// ---- the self-service portal's certificates -----------------------------------------------------

#[test]
fn cli_parses_the_client_ca_key_and_revoke_user_commands() {
    let parse = |args: &[&str]| CliArgs::try_parse_from(args.iter().copied());
    let a = parse(&[
        "cvpn",
        "endpoint",
        "modify",
        "e",
        "--client-ca-key",
        "ca.key",
    ])
    .unwrap();
    let ResourceCommand::Endpoint {
        action:
            EndpointCommand::Modify {
                client_ca_key,
                remove_client_ca_key,
                ..
            },
        ..
    } = a.command
    else {
        panic!()
    };
    assert_eq!(client_ca_key.as_deref(), Some("ca.key"));
    assert!(!remove_client_ca_key);
    assert!(parse(&["cvpn", "endpoint", "modify", "e", "--client-ca-key", ""]).is_ok());
    assert!(parse(&["cvpn", "endpoint", "modify", "e", "--remove-client-ca-key"]).is_ok());
    assert!(parse(&[
        "cvpn",
        "endpoint",
        "modify",
        "e",
        "--remove-client-ca-key",
        "--client-ca-key",
        "k"
    ])
    .is_err());
    let a = parse(&[
        "cvpn",
        "endpoint",
        "revoke-user",
        "e",
        "--username",
        "alice",
    ])
    .unwrap();
    let ResourceCommand::Endpoint {
        action:
            EndpointCommand::RevokeUser {
                endpoint_id,
                username,
            },
        ..
    } = a.command
    else {
        panic!()
    };
    assert_eq!((endpoint_id.as_str(), username.as_str()), ("e", "alice"));
    assert!(parse(&["cvpn", "endpoint", "revoke-user", "e"]).is_err());
    let a = parse(&["cvpn", "endpoint", "certificates", "e", "--username", "bob"]).unwrap();
    assert!(matches!(
        a.command,
        ResourceCommand::Endpoint {
            action: EndpointCommand::Certificates { username: Some(ref u), .. },
            ..
        } if u == "bob"
    ));
    assert!(parse(&["cvpn", "endpoint", "certificates", "e"]).is_ok());
}

#[test]
fn cli_sets_the_client_ca_key_revokes_a_user_and_lists_certificates() {
    let mut d = Daemon::start();
    let eid = create(&d, &["-o", "json"]).json()["client-vpn-endpoint-id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = TempDir::new("cli-ca-key");
    let key = dir.write("ca.key", &d.pki.issuer.key().serialize_pem());
    let key = key.display().to_string();
    let r = cvpn(&d, &["endpoint", "modify", &eid, "--client-ca-key", &key]);
    assert!(r.ok().contains("changed: client-ca-key"), "{}", r.out);
    assert!(r.ok().contains("client-ca-key-set: true"), "{}", r.out);
    let j = cvpn(&d, &["endpoint", "describe", &eid, "-o", "json"]).json();
    assert_eq!(j["client-vpn-endpoints"][0]["client-ca-key-set"], true);
    assert_eq!(
        j["client-vpn-endpoints"][0]["self-service-portal-downloads"],
        0
    );
    assert!(!cvpn(&d, &["endpoint", "describe", &eid, "-o", "json"])
        .ok()
        .contains("PRIVATE KEY"));

    let c = d
        .store
        .issue_portal_certificate(&eid, "alice", std::time::Duration::from_secs(3600))
        .unwrap();
    let r = cvpn(
        &d,
        &["endpoint", "certificates", &eid, "--username", "alice"],
    );
    assert!(
        r.ok().contains(&c.serial_hex) && r.ok().contains("valid"),
        "{}",
        r.out
    );
    d.drain_events();
    let r = cvpn(
        &d,
        &["endpoint", "revoke-user", &eid, "--username", "alice"],
    );
    assert!(
        r.ok().contains(&format!("revoked {}", c.serial_hex)),
        "{}",
        r.out
    );
    assert_eq!(
        d.drain_events(),
        vec![ControlEvent::CrlChanged {
            endpoint_id: eid.clone(),
            revoked_serials: vec![c.serial_hex.clone()],
        }]
    );
    let j = cvpn(&d, &["endpoint", "certificates", &eid, "-o", "json"]).json();
    assert_eq!(j["issued-certificates"][0]["status"], "revoked");
    let r = cvpn(
        &d,
        &["endpoint", "revoke-user", &eid, "--username", "alice"],
    );
    assert!(r.ok().contains("nothing to do"), "{}", r.out);

    let r = cvpn(
        &d,
        &[
            "endpoint",
            "modify",
            &eid,
            "--remove-client-ca-key",
            "-o",
            "json",
        ],
    );
    assert_eq!(
        r.json()["endpoint"]["client-ca-key-set"],
        false,
        "{}",
        r.out
    );
    // A key that is not the CA's: the API's refusal, exit 1.
    let other = dir.write("other.key", &d.pki.server_key);
    let r = cvpn(
        &d,
        &[
            "endpoint",
            "modify",
            &eid,
            "--client-ca-key",
            &other.display().to_string(),
        ],
    );
    assert_eq!(r.code, 1);
    assert!(r.err.contains("client-ca-key does not match"), "{}", r.err);
}
