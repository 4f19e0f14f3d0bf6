//! The AWS-compatible API end to end: the real `aws` CLI and boto3 (from PyPI, in a
//! virtualenv) drive a running `cvpn serve` exactly as they drive AWS Client VPN — import
//! certificates through ACM, create an endpoint, associate, authorize, add a route, export the
//! configuration that stock `openvpn` clients connect with, describe with filters across
//! pages, terminate, import a CRL — and its errors, DryRun and a wrong secret are checked.

use std::net::Ipv4Addr;
use std::time::Duration;

use cvpn_tests::aws_cli::AwsClient;
use cvpn_tests::gateway::{EndpointNet, StoreDaemon, TempDir};
use cvpn_tests::openvpn::OpenVpnClient;
use cvpn_tests::{http, is_root};
use serde_json::Value;

const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const DENIED: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 20);
const LISTEN: &str = "127.0.0.1:8780";

fn reaches(ns: &cvpn_tests::Netns, host: Ipv4Addr) -> bool {
    ns.run(move || http::request(host, 8080, "GET /", 0, Duration::from_secs(2)))
        .is_ok()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {timeout:?}");
}

#[test]
fn the_aws_cli_and_boto3_run_an_administrators_day_against_cvpn() {
    assert!(
        is_root(),
        "the AWS API test needs root: run `cargo xtask test` as root"
    );
    let mut net = EndpointNet::new(2).unwrap();
    let data = TempDir::new("aws").unwrap();
    let config = cvpn_tests::pki::write(
        &net.dir.0,
        "cvpn.toml",
        &format!("public_host = \"10.99.0.1\"\n[aws_api]\nlisten = \"{LISTEN}\"\n"),
    )
    .unwrap();
    let daemon = StoreDaemon::start_with_config(&net.gateway, &data.0, Some(&config)).unwrap();
    http::spawn_server(&net.private, PRIVATE, 8080).unwrap();
    http::spawn_server(&net.private, DENIED, 8080).unwrap();

    // An administrator makes two keys: one that may do everything, one that only reads.
    let full = daemon
        .json(&["access-key", "create", "--description", "admin"])
        .unwrap();
    let reader = daemon
        .json(&["access-key", "create", "--permission", "read-only"])
        .unwrap();
    let home = net.dir.0.clone();
    let aws = AwsClient {
        endpoint_url: format!("http://{LISTEN}"),
        access_key_id: full["access-key-id"].as_str().unwrap().into(),
        secret_access_key: full["secret-access-key"].as_str().unwrap().into(),
        region: "us-east-1".into(),
        home: home.clone(),
    };
    let listed = daemon.json(&["access-key", "list"]).unwrap();
    assert_eq!(
        listed["access-keys"].as_array().unwrap().len(),
        2,
        "{listed}"
    );
    assert!(
        !listed.to_string().contains("secret"),
        "list never shows a secret: {listed}"
    );
    let (cert, key, ca) = net.write_server_files().unwrap();
    let gw = &net.gateway;

    // ACM, as AWS's mutual-authentication guide does it: the server certificate with its key
    // and the CA chain; its ARN names the client CA too (the chain issued the clients).
    let fileb = |p: &std::path::Path| format!("fileb://{}", p.display());
    let server_arn = aws
        .aws_json(
            gw,
            &[
                "acm",
                "import-certificate",
                "--certificate",
                &fileb(&cert),
                "--private-key",
                &fileb(&key),
                "--certificate-chain",
                &fileb(&ca),
            ],
        )
        .unwrap()["CertificateArn"]
        .as_str()
        .unwrap()
        .to_string();
    let ca_arn = server_arn.clone();
    assert!(
        server_arn.starts_with("arn:aws:acm:us-east-1:"),
        "{server_arn}"
    );
    let described = aws
        .aws_json(
            gw,
            &[
                "acm",
                "describe-certificate",
                "--certificate-arn",
                &server_arn,
            ],
        )
        .unwrap();
    assert_eq!(
        described["Certificate"]["DomainName"], "vpn.example.test",
        "{described}"
    );

    // The endpoint, its network, a rule and a route.
    let created = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "create-client-vpn-endpoint",
                "--client-cidr-block",
                "10.77.0.0/22",
                "--server-certificate-arn",
                &server_arn,
                "--authentication-options",
                &format!("Type=certificate-authentication,MutualAuthentication={{ClientRootCertificateChainArn={ca_arn}}}"),
                "--connection-log-options",
                "Enabled=false",
                "--split-tunnel",
                "--description",
                "made by the aws CLI",
            ],
        )
        .unwrap();
    let endpoint = created["ClientVpnEndpointId"].as_str().unwrap().to_string();
    assert_eq!(created["Status"]["Code"], "pending-associate", "{created}");
    let assoc = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "associate-client-vpn-target-network",
                "--client-vpn-endpoint-id",
                &endpoint,
                "--subnet-id",
                "tgt0",
            ],
        )
        .unwrap();
    assert!(
        assoc["AssociationId"]
            .as_str()
            .unwrap()
            .starts_with("cvpn-assoc-"),
        "{assoc}"
    );
    aws.aws_json(
        gw,
        &[
            "ec2",
            "create-client-vpn-route",
            "--client-vpn-endpoint-id",
            &endpoint,
            "--destination-cidr-block",
            "10.88.0.0/24",
            "--target-vpc-subnet-id",
            "tgt0",
        ],
    )
    .unwrap();
    let rule = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "authorize-client-vpn-ingress",
                "--client-vpn-endpoint-id",
                &endpoint,
                "--target-network-cidr",
                &format!("{PRIVATE}/32"),
                "--access-group-id",
                "engineering",
            ],
        )
        .unwrap();
    assert_eq!(rule["Status"]["Code"], "active", "{rule}");
    let described = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "describe-client-vpn-endpoints",
                "--client-vpn-endpoint-ids",
                &endpoint,
            ],
        )
        .unwrap();
    let ep = &described["ClientVpnEndpoints"][0];
    assert_eq!(ep["Status"]["Code"], "available", "{described}");
    assert_eq!(
        ep["ServerCertificateArn"],
        server_arn.as_str(),
        "{described}"
    );
    assert_eq!(
        ep["AuthenticationOptions"][0]["MutualAuthentication"]["ClientRootCertificateChain"],
        ca_arn.as_str(),
        "{described}"
    );
    assert_eq!(ep["SplitTunnel"], true);
    assert_eq!(ep["Description"], "made by the aws CLI");

    // Stock clients connect with the exported configuration plus their own certificate.
    let exported = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "export-client-vpn-client-configuration",
                "--client-vpn-endpoint-id",
                &endpoint,
            ],
        )
        .unwrap()["ClientConfiguration"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(exported.contains("remote 10.99.0.1 443"), "{exported}");
    let mut connect = |i: usize, user: &str| {
        let pem = net.ca.client(user, &["engineering"]).unwrap();
        let serial = net.ca.last_issued_serial();
        let text = exported.replace(
            "remote 10.99.0.1 443",
            &format!("remote {} 443", EndpointNet::server_addr(i)),
        );
        let text = format!(
            "{text}\n<cert>\n{}</cert>\n<key>\n{}</key>\nconnect-retry-max 1\n",
            pem.cert, pem.key
        );
        let mut c = OpenVpnClient::start_with_text(&net.clients[i], &text, &home, user).unwrap();
        c.wait_connected(Duration::from_secs(20)).unwrap();
        (c, serial)
    };
    let (mut alice, alice_serial) = connect(0, "alice");
    let (mut bob, _) = connect(1, "bob");
    assert!(
        reaches(&net.clients[0], PRIVATE),
        "the rule lets alice reach {PRIVATE}"
    );
    assert!(!reaches(&net.clients[0], DENIED), "no rule covers {DENIED}");

    // boto3: more rules, then every page of them; filters; DryRun; errors; a wrong secret.
    let program = format!(
        r#"
import os, sys, boto3, botocore.exceptions as bx
ec2 = boto3.client("ec2", endpoint_url=os.environ["CVPN_ENDPOINT_URL"])
ep = "{endpoint}"
for i in range(11):
    ec2.authorize_client_vpn_ingress(ClientVpnEndpointId=ep, TargetNetworkCidr=f"10.{{100+i}}.0.0/16", AccessGroupId=f"g{{i % 3}}", Description=f"rule {{i}}")
pages = list(ec2.get_paginator("describe_client_vpn_authorization_rules").paginate(ClientVpnEndpointId=ep, PaginationConfig={{"PageSize": 5}}))
assert len(pages) == 3, [len(p["AuthorizationRules"]) for p in pages]
assert sum(len(p["AuthorizationRules"]) for p in pages) == 12
g1 = ec2.describe_client_vpn_authorization_rules(ClientVpnEndpointId=ep, Filters=[{{"Name": "group-id", "Values": ["g1"]}}])["AuthorizationRules"]
assert len(g1) == 4 and all(r["GroupId"] == "g1" for r in g1), g1
conns = ec2.describe_client_vpn_connections(ClientVpnEndpointId=ep)["Connections"]
assert sorted(c["CommonName"] for c in conns if c["Status"]["Code"] == "active") == ["alice", "bob"], conns
one = ec2.describe_client_vpn_connections(ClientVpnEndpointId=ep, Filters=[{{"Name": "connection-id", "Values": [conns[0]["ConnectionId"]]}}])["Connections"]
assert [c["ConnectionId"] for c in one] == [conns[0]["ConnectionId"]], one
def code(f):
    try:
        f()
    except bx.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None
assert code(lambda: ec2.delete_client_vpn_endpoint(ClientVpnEndpointId=ep, DryRun=True)) == ("DryRunOperation", 412)
assert code(lambda: ec2.describe_client_vpn_routes(ClientVpnEndpointId="cvpn-endpoint-0123456789abcdef0")) == ("InvalidClientVpnEndpointId.NotFound", 400)
assert code(lambda: ec2.authorize_client_vpn_ingress(ClientVpnEndpointId=ep, TargetNetworkCidr="10.0.0.0/33", AuthorizeAllGroups=True))[0] == "InvalidParameterValue"
bad = boto3.client("ec2", endpoint_url=os.environ["CVPN_ENDPOINT_URL"], aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"], aws_secret_access_key="wrong" * 8)
assert code(lambda: bad.describe_client_vpn_endpoints()) == ("AuthFailure", 401)
ro = boto3.client("ec2", endpoint_url=os.environ["CVPN_ENDPOINT_URL"], aws_access_key_id="{ro_id}", aws_secret_access_key="{ro_secret}")
assert len(ro.describe_client_vpn_endpoints()["ClientVpnEndpoints"]) == 1
assert code(lambda: ro.delete_client_vpn_endpoint(ClientVpnEndpointId=ep)) == ("UnauthorizedOperation", 403)
print("boto3 ok")
"#,
        ro_id = reader["access-key-id"].as_str().unwrap(),
        ro_secret = reader["secret-access-key"].as_str().unwrap(),
    );
    let ran = aws.python(gw, &program).unwrap();
    assert!(
        ran.code == 0 && ran.stdout.contains("boto3 ok"),
        "boto3 scenario failed ({}):\n{}\n{}",
        ran.code,
        ran.stdout,
        ran.stderr
    );

    // The aws CLI's own error output for a wrong secret.
    let wrong = AwsClient {
        secret_access_key: "x".repeat(40),
        ..aws.clone()
    };
    let r = wrong
        .aws(gw, &["ec2", "describe-client-vpn-endpoints"])
        .unwrap();
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("AuthFailure"), "{}", r.stderr);

    // Terminate bob through EC2; his tunnel ends.
    let bob_id = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "describe-client-vpn-connections",
                "--client-vpn-endpoint-id",
                &endpoint,
                "--filters",
                "Name=username,Values=bob",
            ],
        )
        .unwrap()["Connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Status"]["Code"] == "active")
        .map(|c| c["ConnectionId"].as_str().unwrap().to_string());
    let bob_id = match bob_id {
        Some(id) => id,
        // Certificate sessions carry no user name: find bob by his certificate's name.
        None => aws
            .aws_json(
                gw,
                &[
                    "ec2",
                    "describe-client-vpn-connections",
                    "--client-vpn-endpoint-id",
                    &endpoint,
                ],
            )
            .unwrap()["Connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["CommonName"] == "bob" && c["Status"]["Code"] == "active")
            .map(|c| c["ConnectionId"].as_str().unwrap().to_string())
            .expect("bob's connection"),
    };
    let t = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "terminate-client-vpn-connections",
                "--client-vpn-endpoint-id",
                &endpoint,
                "--connection-id",
                &bob_id,
            ],
        )
        .unwrap();
    assert_eq!(
        t["ConnectionStatuses"][0]["PreviousStatus"]["Code"], "active",
        "{t}"
    );
    wait_until(
        "bob's client is told to go",
        Duration::from_secs(10),
        || {
            bob.exited().is_some()
                || bob.log().iter().any(|l| {
                    l.contains("SIGUSR1") || l.contains("SIGTERM") || l.contains("restart")
                })
        },
    );
    bob.stop();

    // A CRL revoking alice's certificate, imported through EC2, ends her session.
    net.ca.revoke(alice_serial);
    let crl = cvpn_tests::pki::write(&net.dir.0, "revoking-alice.pem", &net.ca.crl_pem().unwrap())
        .unwrap();
    aws.aws_json(
        gw,
        &[
            "ec2",
            "import-client-vpn-client-certificate-revocation-list",
            "--client-vpn-endpoint-id",
            &endpoint,
            "--certificate-revocation-list",
            &format!("file://{}", crl.display()),
        ],
    )
    .unwrap();
    wait_until(
        "alice's traffic stops after the CRL",
        Duration::from_secs(10),
        || !reaches(&net.clients[0], PRIVATE),
    );
    let exported: Value = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "export-client-vpn-client-certificate-revocation-list",
                "--client-vpn-endpoint-id",
                &endpoint,
            ],
        )
        .unwrap();
    assert!(
        exported["CertificateRevocationList"]
            .as_str()
            .unwrap()
            .contains("X509 CRL"),
        "{exported}"
    );
    alice.stop();

    // The certificate in use cannot go; once the endpoint is deleted it can.
    let r = aws
        .aws(
            gw,
            &[
                "acm",
                "delete-certificate",
                "--certificate-arn",
                &server_arn,
            ],
        )
        .unwrap();
    assert!(
        r.code != 0 && r.stderr.contains("ResourceInUseException"),
        "{}",
        r.stderr
    );
    let networks = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "describe-client-vpn-target-networks",
                "--client-vpn-endpoint-id",
                &endpoint,
            ],
        )
        .unwrap();
    let assoc_id = networks["ClientVpnTargetNetworks"][0]["AssociationId"]
        .as_str()
        .unwrap()
        .to_string();
    // A security group (made with cvpn; EC2's CreateSecurityGroup is a VPC call cvpn does not
    // serve) applied through EC2 to the node's networks: VpcId names the node.
    let node = networks["ClientVpnTargetNetworks"][0]["VpcId"]
        .as_str()
        .unwrap()
        .to_string();
    let sg = daemon
        .json(&[
            "security-group",
            "create",
            "--name",
            "everything",
            "--egress",
            "all:0.0.0.0/0",
        ])
        .unwrap()["security-group-id"]
        .as_str()
        .unwrap()
        .to_string();
    let applied = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "apply-security-groups-to-client-vpn-target-network",
                "--client-vpn-endpoint-id",
                &endpoint,
                "--vpc-id",
                &node,
                "--security-group-ids",
                &sg,
            ],
        )
        .unwrap();
    assert_eq!(applied["SecurityGroupIds"][0], sg.as_str(), "{applied}");
    let networks = aws
        .aws_json(
            gw,
            &[
                "ec2",
                "describe-client-vpn-target-networks",
                "--client-vpn-endpoint-id",
                &endpoint,
            ],
        )
        .unwrap();
    assert_eq!(
        networks["ClientVpnTargetNetworks"][0]["SecurityGroups"][0],
        sg.as_str(),
        "{networks}"
    );
    assert_eq!(
        networks["ClientVpnTargetNetworks"][0]["TargetNetworkId"]
            .as_str()
            .map(|t| t.ends_with("tgt0")),
        Some(true),
        "{networks}"
    );
    let r = aws
        .aws(
            gw,
            &[
                "ec2",
                "delete-client-vpn-endpoint",
                "--client-vpn-endpoint-id",
                &endpoint,
            ],
        )
        .unwrap();
    assert!(
        r.code != 0 && r.stderr.contains("IncorrectState") && r.stderr.contains("disassociate"),
        "{}",
        r.stderr
    );
    aws.aws_json(
        gw,
        &[
            "ec2",
            "disassociate-client-vpn-target-network",
            "--client-vpn-endpoint-id",
            &endpoint,
            "--association-id",
            &assoc_id,
        ],
    )
    .unwrap();
    aws.aws_json(
        gw,
        &[
            "ec2",
            "delete-client-vpn-endpoint",
            "--client-vpn-endpoint-id",
            &endpoint,
        ],
    )
    .unwrap();
    wait_until("the endpoint is deleted", Duration::from_secs(10), || {
        aws.aws(
            gw,
            &[
                "acm",
                "delete-certificate",
                "--certificate-arn",
                &server_arn,
            ],
        )
        .map(|r| r.code == 0)
        .unwrap_or(false)
    });
    drop(daemon);
}

/// Runs `cvpn ARGS --output json` against the daemon.
fn cvpn(daemon: &StoreDaemon, args: &[&str]) -> Value {
    daemon.json(args).unwrap()
}

/// The AWS API listener with a certificate (HTTPS), scraped by Prometheus over TLS.
#[test]
fn prometheus_scrapes_active_connections_bytes_and_drops() {
    assert!(
        is_root(),
        "the metrics test needs root: run `cargo xtask test` as root"
    );
    let mut net = EndpointNet::new(1).unwrap();
    let data = TempDir::new("prom").unwrap();
    let (cert, key, ca) = net.write_server_files().unwrap();
    let config = cvpn_tests::pki::write(
        &net.dir.0,
        "cvpn.toml",
        &format!(
            "node_name = \"gw-a\"\n[aws_api]\nlisten = \"{LISTEN}\"\ncertificate = {cert:?}\nkey = {key:?}\n[connections]\ncounters_seconds = 1\n"
        ),
    )
    .unwrap();
    let daemon = StoreDaemon::start_with_config(&net.gateway, &data.0, Some(&config)).unwrap();
    http::spawn_server(&net.private, PRIVATE, 8080).unwrap();
    let endpoint = cvpn(
        &daemon,
        &[
            "endpoint",
            "create",
            "--client-cidr",
            "10.77.0.0/22",
            "--server-cert",
            cert.to_str().unwrap(),
            "--server-key",
            key.to_str().unwrap(),
            "--client-ca",
            ca.to_str().unwrap(),
            "--split-tunnel",
        ],
    )["client-vpn-endpoint-id"]
        .as_str()
        .unwrap()
        .to_string();
    daemon
        .associate_and_authorize(&endpoint, &[(PRIVATE, "engineering")])
        .unwrap();
    let prom = cvpn_tests::prometheus::Prometheus::start_with_tls(
        &net.gateway,
        LISTEN,
        Some((&ca, "vpn.example.test")),
    )
    .unwrap();

    // One client, some traffic to the host it may reach and some to one it may not.
    let pem = net.ca.client("alice", &["engineering"]).unwrap();
    let d = net.dir.0.clone();
    let c = cvpn_tests::pki::write(&d, "alice.crt", &pem.cert).unwrap();
    let k = cvpn_tests::pki::write(&d, "alice.key", &pem.key).unwrap();
    let out = daemon
        .cli(&[
            "config",
            "export",
            &endpoint,
            "--remote-host",
            &EndpointNet::server_addr(0),
            "--cert",
            c.to_str().unwrap(),
            "--key",
            k.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut alice = OpenVpnClient::start_with_text(
        &net.clients[0],
        &format!("{}\nconnect-retry-max 1\n", out.stdout),
        &d,
        "alice",
    )
    .unwrap();
    alice.wait_connected(Duration::from_secs(20)).unwrap();
    net.clients[0]
        .run(move || http::request(PRIVATE, 8080, "POST /", 200_000, Duration::from_secs(3)))
        .unwrap();
    assert!(!reaches(&net.clients[0], DENIED));

    // What the database recorded of her traffic (counters every second) is what Prometheus
    // scraped: both come from the same reads of the data plane.
    let labels = format!("endpoint=\"{endpoint}\",node=\"gw-a\"");
    let mut last: (Option<u64>, Option<f64>);
    let started = std::time::Instant::now();
    let agreed = loop {
        let conns = cvpn(
            &daemon,
            &["connection", "list", &endpoint, "--status", "active"],
        );
        let stored = conns["connections"][0]["ingress-bytes"].as_u64();
        let scraped = prom
            .query(
                &net.gateway,
                &format!("cvpn_ingress_bytes_total{{{labels}}}"),
            )
            .unwrap();
        last = (stored, scraped);
        if let (Some(s), Some(p)) = last {
            if s >= 200_000 && p == s as f64 {
                break true;
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        agreed,
        "database vs Prometheus ingress bytes: {last:?}\n{}",
        prom.log()
    );
    assert_eq!(
        prom.query(
            &net.gateway,
            &format!("cvpn_active_connections{{{labels}}}")
        )
        .unwrap(),
        Some(1.0)
    );
    assert!(
        prom.query(&net.gateway, &format!("cvpn_handshakes_total{{{labels}}}"))
            .unwrap()
            >= Some(1.0)
    );
    let started = std::time::Instant::now();
    let denied = loop {
        let v = prom
            .query(
                &net.gateway,
                &format!("cvpn_dataplane_packets{{{labels},counter=\"dropped_denied\"}}"),
            )
            .unwrap();
        if v.is_some_and(|v| v > 0.0) || started.elapsed() > Duration::from_secs(15) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        denied.is_some_and(|v| v > 0.0),
        "drops by reason: {denied:?}"
    );

    // She leaves: no active connection any more.
    alice.stop();
    wait_until(
        "Prometheus sees no active connection",
        Duration::from_secs(20),
        || {
            prom.query(
                &net.gateway,
                &format!("cvpn_active_connections{{{labels}}}"),
            )
            .ok()
            .flatten()
                == Some(0.0)
        },
    );
    drop(daemon);
}
