//! The AWS-compatible listener's router driven in-process with requests signed as the AWS
//! SDKs sign them, over a store in a temporary directory. The real `aws` CLI and boto3 drive a
//! running daemon in `tests/tests/aws_api.rs`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::api::tests::{Pki, TempDir};
use crate::model::{CreateAccessKeyRequest, NewAccessKey};
use crate::storage::{Store, StoreOptions};

struct Fx {
    state: Arc<AwsState>,
    full: NewAccessKey,
    read_only: NewAccessKey,
    pki: Pki,
    _dir: TempDir,
}

fn amz_date(t: i64) -> String {
    let ts = crate::model::Timestamp(t).to_string(); // YYYY-MM-DD HH:MM:SS
    format!(
        "{}{}{}T{}{}{}Z",
        &ts[0..4],
        &ts[5..7],
        &ts[8..10],
        &ts[11..13],
        &ts[14..16],
        &ts[17..19]
    )
}

impl Fx {
    fn new() -> Fx {
        let dir = TempDir::new("aws");
        let store = Arc::new(Store::open(StoreOptions::in_dir(dir.path().join("data"))).unwrap());
        let full = store
            .create_access_key(&CreateAccessKeyRequest::default())
            .unwrap();
        let read_only = store
            .create_access_key(&CreateAccessKeyRequest {
                permission: Some("read-only".into()),
                description: Some("auditor".into()),
            })
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::mem::forget(rx);
        let api = crate::api::ApiState::new(store, tx);
        Fx {
            state: Arc::new(AwsState {
                api,
                region: "eu-west-3".into(),
                metrics: Some(crate::metrics::Metrics::new("gw-test")),
            }),
            full,
            read_only,
            pki: Pki::new(),
            _dir: dir,
        }
    }

    /// Sends a signed request; returns the status and body.
    async fn send_as(
        &self,
        key: &NewAccessKey,
        secret: &str,
        service: &str,
        target: Option<&str>,
        body: &str,
        skew: i64,
    ) -> (u16, String) {
        let date = amz_date(now_secs() + skew);
        let content_type = if target.is_some() {
            "application/x-amz-json-1.1"
        } else {
            "application/x-www-form-urlencoded; charset=utf-8"
        };
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("content-type", content_type.as_bytes()),
            ("host", b"127.0.0.1:8780"),
            ("x-amz-date", date.as_bytes()),
        ];
        if let Some(t) = target {
            headers.push(("x-amz-target", t.as_bytes()));
        }
        let signed: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        let req = sigv4::SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: headers.clone(),
            body: body.as_bytes(),
        };
        let auth = sigv4::sign(
            &req,
            &key.key.access_key_id,
            secret,
            "eu-west-3",
            service,
            &signed,
        )
        .unwrap();
        let mut b = Request::builder().method("POST").uri("/");
        for (n, v) in &headers {
            b = b.header(*n, *v);
        }
        let req = b
            .header("authorization", auth)
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = router(Arc::clone(&self.state)).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn ec2(&self, body: &str) -> (u16, String) {
        let key = self.full.clone();
        self.send_as(&key, &key.secret_access_key, "ec2", None, body, 0)
            .await
    }

    async fn acm(&self, op: &str, body: Value) -> (u16, Value) {
        let key = self.full.clone();
        let (s, b) = self
            .send_as(
                &key,
                &key.secret_access_key,
                "acm",
                Some(&format!("CertificateManager.{op}")),
                &body.to_string(),
                0,
            )
            .await;
        (s, serde_json::from_str(&b).unwrap())
    }

    async fn import(&self, cert: &str, key: Option<&str>) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut body = json!({"Certificate": b64(cert)});
        if let Some(k) = key {
            body["PrivateKey"] = json!(b64(k));
        }
        let (s, v) = self.acm("ImportCertificate", body).await;
        assert_eq!(s, 200, "{v}");
        v["CertificateArn"].as_str().unwrap().to_string()
    }

    /// Imports the PKI and creates an endpoint; returns its id.
    async fn endpoint(&self) -> String {
        let server = self
            .import(&self.pki.server_cert, Some(&self.pki.server_key))
            .await;
        let ca = self.import(&self.pki.ca_pem, None).await;
        let (s, body) = self
            .ec2(&format!(
                "Action=CreateClientVpnEndpoint&Version=2016-11-15&ClientCidrBlock=10.2.0.0%2F22\
                 &ServerCertificateArn={}&Authentication.1.Type=certificate-authentication\
                 &Authentication.1.MutualAuthentication.ClientRootCertificateChainArn={}\
                 &ConnectionLogOptions.Enabled=false&DnsServers.1=10.0.0.2",
                enc(&server),
                enc(&ca)
            ))
            .await;
        assert_eq!(s, 200, "{body}");
        between(&body, "<clientVpnEndpointId>", "</clientVpnEndpointId>")
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn between(s: &str, a: &str, b: &str) -> String {
    let i = s.find(a).unwrap_or_else(|| panic!("{a} not in {s}")) + a.len();
    let j = s[i..].find(b).unwrap() + i;
    s[i..j].to_string()
}

fn code(body: &str) -> String {
    between(body, "<Code>", "</Code>")
}

#[tokio::test]
async fn create_describe_and_delete_through_ec2_with_acm_certificates() {
    let fx = Fx::new();
    let id = fx.endpoint().await;
    assert!(id.starts_with("cvpn-endpoint-"), "{id}");
    let (s, body) = fx
        .ec2(&format!(
            "Action=DescribeClientVpnEndpoints&Version=2016-11-15&ClientVpnEndpointId.1={id}"
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.starts_with("<?xml"), "{body}");
    assert!(body.contains("<DescribeClientVpnEndpointsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"), "{body}");
    assert!(
        body.contains("<status><code>pending-associate</code>"),
        "{body}"
    );
    assert!(
        body.contains("<dnsServer><item>10.0.0.2</item></dnsServer>"),
        "{body}"
    );
    assert!(
        body.contains("<serverCertificateArn>arn:aws:acm:eu-west-3:"),
        "{body}"
    );
    assert!(
        body.contains("<clientRootCertificateChain>arn:aws:acm:eu-west-3:"),
        "{body}"
    );
    assert!(
        body.contains("<connectionLogOptions><Enabled>false</Enabled>"),
        "{body}"
    );
    // The certificates are in use now: ACM refuses to delete them.
    let arn = between(&body, "<serverCertificateArn>", "</serverCertificateArn>");
    let (s, v) = fx
        .acm("DeleteCertificate", json!({"CertificateArn": arn}))
        .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("ResourceInUseException")),
        "{v}"
    );
    let (s, v) = fx
        .acm("DescribeCertificate", json!({"CertificateArn": arn}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["Certificate"]["Type"], "IMPORTED");
    assert!(
        v["Certificate"]["InUseBy"][0]
            .as_str()
            .unwrap()
            .ends_with(&id),
        "{v}"
    );
    let (s, body) = fx
        .ec2(&format!(
            "Action=DeleteClientVpnEndpoint&Version=2016-11-15&ClientVpnEndpointId={id}"
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.contains("<status><code>deleting</code>")
            || body.contains("<status><code>deleted</code>"),
        "{body}"
    );
}

#[tokio::test]
async fn signatures_clock_and_permissions_are_enforced() {
    let fx = Fx::new();
    let body = "Action=DescribeClientVpnEndpoints&Version=2016-11-15";
    let full = fx.full.clone();
    let (s, b) = fx
        .send_as(&full, "wrong-secret", "ec2", None, body, 0)
        .await;
    assert_eq!((s, code(&b).as_str()), (401, "AuthFailure"), "{b}");
    let (s, b) = fx
        .send_as(&full, &full.secret_access_key, "ec2", None, body, 16 * 60)
        .await;
    assert_eq!((s, code(&b).as_str()), (400, "RequestExpired"), "{b}");
    let (s, b) = fx
        .send_as(&full, &full.secret_access_key, "ec2", None, body, 14 * 60)
        .await;
    assert_eq!(s, 200, "{b}");
    // Unsigned.
    let req = Request::builder()
        .method("POST")
        .uri("/")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let resp = router(Arc::clone(&fx.state)).oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // A deleted key signs nothing any more.
    let ro = fx.read_only.clone();
    let (s, b) = fx
        .send_as(&ro, &ro.secret_access_key, "ec2", None, body, 0)
        .await;
    assert_eq!(s, 200, "a read-only key describes: {b}");
    let (s, b) = fx
        .send_as(
            &ro,
            &ro.secret_access_key,
            "ec2",
            None,
            "Action=DeleteClientVpnEndpoint&Version=2016-11-15&ClientVpnEndpointId=cvpn-endpoint-0123456789abcdef0",
            0,
        )
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (403, "UnauthorizedOperation"),
        "{b}"
    );
    fx.state
        .api
        .store
        .delete_access_key(&ro.key.access_key_id)
        .unwrap();
    let (s, b) = fx
        .send_as(&ro, &ro.secret_access_key, "ec2", None, body, 0)
        .await;
    assert_eq!((s, code(&b).as_str()), (401, "AuthFailure"), "{b}");
    // A request signed for ACM is not an EC2 request.
    let (s, b) = fx
        .send_as(&full, &full.secret_access_key, "acm", None, body, 0)
        .await;
    assert_eq!((s, code(&b).as_str()), (401, "AuthFailure"), "{b}");
}

#[tokio::test]
async fn dry_run_errors_and_unknown_things_answer_as_ec2_does() {
    let fx = Fx::new();
    let id = fx.endpoint().await;
    let cases = [
        (
            format!("Action=DeleteClientVpnEndpoint&Version=2016-11-15&ClientVpnEndpointId={id}&DryRun=true"),
            412,
            "DryRunOperation",
        ),
        (
            "Action=DescribeClientVpnRoutes&Version=2016-11-15&ClientVpnEndpointId=cvpn-endpoint-0123456789abcdef0".to_string(),
            400,
            "InvalidClientVpnEndpointId.NotFound",
        ),
        (
            "Action=RunInstances&Version=2016-11-15".to_string(),
            400,
            "InvalidAction",
        ),
        (
            format!("Action=DescribeClientVpnRoutes&Version=2016-11-15&ClientVpnEndpointId={id}&Bogus=1"),
            400,
            "UnknownParameter",
        ),
        (
            format!("Action=DescribeClientVpnRoutes&Version=2016-11-15&ClientVpnEndpointId={id}&Filter.1.Name=nope&Filter.1.Value.1=x"),
            400,
            "InvalidParameterValue",
        ),
        (
            format!("Action=AuthorizeClientVpnIngress&Version=2016-11-15&ClientVpnEndpointId={id}&TargetNetworkCidr=10.0.0.0%2F33&AuthorizeAllGroups=true"),
            400,
            "InvalidParameterValue",
        ),
        (
            "Action=CreateClientVpnRoute&Version=2016-11-15".to_string(),
            400,
            "MissingParameter",
        ),
    ];
    for (body, status, want) in cases {
        let (s, b) = fx.ec2(&body).await;
        assert_eq!((s, code(&b)), (status, want.to_string()), "{body}: {b}");
        assert!(b.contains("<RequestID>"), "{b}");
    }
    // DryRun changed nothing.
    let (s, b) = fx
        .ec2(&format!(
            "Action=DescribeClientVpnEndpoints&Version=2016-11-15&ClientVpnEndpointId.1={id}"
        ))
        .await;
    assert_eq!(s, 200);
    assert!(b.contains("pending-associate"), "{b}");
}

#[tokio::test]
async fn rules_page_and_filter_and_a_client_token_makes_a_create_idempotent() {
    let fx = Fx::new();
    let id = fx.endpoint().await;
    for i in 0..12 {
        let (s, b) = fx
            .ec2(&format!(
                "Action=AuthorizeClientVpnIngress&Version=2016-11-15&ClientVpnEndpointId={id}\
                 &TargetNetworkCidr=10.{i}.0.0%2F16&AccessGroupId=g{}&ClientToken=t-{i}",
                i % 3
            ))
            .await;
        assert_eq!(s, 200, "{b}");
    }
    // The same token and parameters: the first answer, no second rule.
    let (s, b) = fx
        .ec2(&format!(
            "Action=AuthorizeClientVpnIngress&Version=2016-11-15&ClientVpnEndpointId={id}\
             &TargetNetworkCidr=10.0.0.0%2F16&AccessGroupId=g0&ClientToken=t-0"
        ))
        .await;
    assert_eq!(
        s, 200,
        "a retry is answered, not refused as a duplicate: {b}"
    );
    // The same token with other parameters.
    let (s, b) = fx
        .ec2(&format!(
            "Action=AuthorizeClientVpnIngress&Version=2016-11-15&ClientVpnEndpointId={id}\
             &TargetNetworkCidr=10.99.0.0%2F16&AccessGroupId=g0&ClientToken=t-0"
        ))
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (400, "IdempotentParameterMismatch"),
        "{b}"
    );
    // Pages of 5 over 12 rules.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..4 {
        let mut q = format!(
            "Action=DescribeClientVpnAuthorizationRules&Version=2016-11-15&ClientVpnEndpointId={id}&MaxResults=5"
        );
        if let Some(t) = &token {
            q.push_str(&format!("&NextToken={t}"));
        }
        let (s, b) = fx.ec2(&q).await;
        assert_eq!(s, 200, "{b}");
        seen.extend(b.matches("<destinationCidr>").map(|_| ()));
        token = b
            .contains("<nextToken>")
            .then(|| between(&b, "<nextToken>", "</nextToken>"));
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 12);
    assert!(token.is_none());
    // A filter.
    let (s, b) = fx
        .ec2(&format!(
            "Action=DescribeClientVpnAuthorizationRules&Version=2016-11-15&ClientVpnEndpointId={id}\
             &Filter.1.Name=group-id&Filter.1.Value.1=g1&Filter.1.Value.2=g2"
        ))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b.matches("<groupId>").count(), 8, "{b}");
    assert_eq!(b.matches("<groupId>g0</groupId>").count(), 0, "{b}");
    // A forged token.
    let (s, b) = fx
        .ec2(&format!(
            "Action=DescribeClientVpnAuthorizationRules&Version=2016-11-15&ClientVpnEndpointId={id}&NextToken=cvpn-page-999"
        ))
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (400, "InvalidParameterValue"),
        "{b}"
    );
}

#[tokio::test]
async fn acm_refuses_a_key_of_another_certificate_and_lists_imports() {
    let fx = Fx::new();
    let other = Pki::with_ca_name("another CA");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (s, v) = fx
        .acm(
            "ImportCertificate",
            json!({"Certificate": b64(&fx.pki.server_cert), "PrivateKey": b64(&other.server_key)}),
        )
        .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("ValidationException")),
        "{v}"
    );
    let (s, v) = fx
        .acm("ImportCertificate", json!({"Certificate": "not base64!"}))
        .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("ValidationException")),
        "{v}"
    );
    let a = fx.import(&fx.pki.ca_pem, None).await;
    let (s, v) = fx.acm("ListCertificates", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["CertificateSummaryList"][0]["CertificateArn"], a.as_str());
    let (s, v) = fx
        .acm("DeleteCertificate", json!({"CertificateArn": a}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = fx
        .acm("DescribeCertificate", json!({"CertificateArn": a}))
        .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("ResourceNotFoundException")),
        "{v}"
    );
}

#[tokio::test]
async fn directory_options_lambda_arns_and_modify_map_to_cvpns_resources() {
    let fx = Fx::new();
    let dir = fx
        .state
        .api
        .store
        .create_directory(&crate::model::CreateDirectoryRequest {
            name: Some("corp".into()),
            urls: vec!["ldaps://dc1.example.test".into()],
            base_dn: Some("dc=example,dc=test".into()),
            ..Default::default()
        })
        .unwrap();
    let server = fx
        .import(&fx.pki.server_cert, Some(&fx.pki.server_key))
        .await;
    let ca = fx.import(&fx.pki.ca_pem, None).await;
    let (s, body) = fx
        .ec2(&format!(
            "Action=CreateClientVpnEndpoint&Version=2016-11-15&ClientCidrBlock=10.4.0.0%2F22\
             &ServerCertificateArn={}&Authentication.1.Type=certificate-authentication\
             &Authentication.1.MutualAuthentication.ClientRootCertificateChainArn={}\
             &Authentication.2.Type=directory-service-authentication\
             &Authentication.2.ActiveDirectory.DirectoryId={}\
             &ConnectionLogOptions.Enabled=true&ConnectionLogOptions.CloudwatchLogGroup=vpn\
             &TagSpecification.1.ResourceType=client-vpn-endpoint&TagSpecification.1.Tag.1.Key=team\
             &TagSpecification.1.Tag.1.Value=net&TransportProtocol=tcp&VpnPort=1194",
            enc(&server),
            enc(&ca),
            dir.directory_id
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    let id = between(&body, "<clientVpnEndpointId>", "</clientVpnEndpointId>");
    let ep = fx.state.api.store.describe_endpoint(&id).unwrap();
    assert_eq!(ep.tags[0].key, "team");
    assert_eq!(ep.vpn_port, 1194);
    assert!(ep.authentication_options.iter().any(|o| matches!(
        o,
        crate::model::AuthenticationOption::DirectoryServiceAuthentication { directory_id }
            if *directory_id == dir.directory_id
    )));
    // A Lambda ARN names an executable of [connect_handler] executable_dir: this store has
    // none, so it is refused saying so; an https URL is taken as it is.
    let (s, b) = fx
        .ec2(&format!(
            "Action=ModifyClientVpnEndpoint&Version=2016-11-15&ClientVpnEndpointId={id}\
             &ClientConnectOptions.Enabled=true\
             &ClientConnectOptions.LambdaFunctionArn=arn:aws:lambda:us-east-1:123456789012:function:AWSClientVPN-check"
        ))
        .await;
    assert_eq!(
        (s, code(&b).as_str()),
        (400, "InvalidParameterValue"),
        "{b}"
    );
    assert!(b.contains("executable_dir"), "{b}");
    let (s, b) = fx
        .ec2(&format!(
            "Action=ModifyClientVpnEndpoint&Version=2016-11-15&ClientVpnEndpointId={id}\
             &DnsServers.CustomDnsServers.1=10.0.0.2&DnsServers.Enabled=true&Description=x%26y\
             &SessionTimeoutHours=8&ClientLoginBannerOptions.Enabled=true\
             &ClientLoginBannerOptions.BannerText=hello"
        ))
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("<return>true</return>"), "{b}");
    let (_, b) = fx
        .ec2(&format!(
            "Action=DescribeClientVpnEndpoints&Version=2016-11-15&ClientVpnEndpointId.1={id}"
        ))
        .await;
    for want in [
        "<description>x&amp;y</description>",
        "<sessionTimeoutHours>8</sessionTimeoutHours>",
        "<bannerText>hello</bannerText>",
        "<dnsServer><item>10.0.0.2</item></dnsServer>",
        "<type>directory-service-authentication</type><activeDirectory><directoryId>",
        "<transportProtocol>tcp</transportProtocol>",
        "<CloudwatchLogStream>connection.log</CloudwatchLogStream>",
        "<tagSet><item><key>team</key><value>net</value></item></tagSet>",
    ] {
        assert!(b.contains(want), "{want} not in {b}");
    }
    // DnsServers.Enabled=false clears the list.
    let (s, b) = fx
        .ec2(&format!(
            "Action=ModifyClientVpnEndpoint&Version=2016-11-15&ClientVpnEndpointId={id}&DnsServers.Enabled=false"
        ))
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(fx
        .state
        .api
        .store
        .describe_endpoint(&id)
        .unwrap()
        .dns_servers
        .is_empty());
}
