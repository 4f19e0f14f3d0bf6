//! `cvpn access-key …`: the access keys that sign requests to the AWS-compatible API (`aws ec2
//! … --endpoint-url`, boto3). The secret is printed once, by `create`.

use clap::Subcommand;
use hyper::Method;
use serde_json::Map;

use super::table::Table;
use super::{enc, insert, Cx};
use crate::model::{AccessKey, AccessKeyList, NewAccessKey};

/// `cvpn access-key …`.
#[derive(Clone, Debug, Subcommand)]
pub enum AccessKeyCommand {
    /// Make an access key; its secret is shown this once.
    Create {
        /// full (every call, the default) or read-only (describe, export and list calls).
        #[arg(long, value_name = "PERMISSION")]
        permission: Option<String>,
        /// A description (who or what uses it).
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List the access keys (never their secrets).
    List,
    /// Delete an access key: requests it signs are refused from now on.
    Delete {
        /// The access key id, AKIA….
        access_key_id: String,
    },
}

pub(super) async fn access_key(c: AccessKeyCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        AccessKeyCommand::Create {
            permission,
            description,
        } => {
            let mut m = Map::new();
            insert(&mut m, "permission", permission.as_deref());
            insert(&mut m, "description", description.as_deref());
            let reply = cx
                .send_json(Method::POST, "/v1/access-keys".into(), m)
                .await?;
            cx.show(&reply, |k: NewAccessKey| {
                format!(
                    "aws_access_key_id     = {}\naws_secret_access_key = {}\npermission            = {}\n(the secret is shown once: put it in the AWS CLI's credentials file or your SDK's configuration now)\n",
                    k.key.access_key_id, k.secret_access_key, k.key.permission
                )
            })
        }
        AccessKeyCommand::List => {
            let reply = cx.get("/v1/access-keys".into()).await?;
            cx.show(&reply, |l: AccessKeyList| {
                let mut t = Table::new(&[
                    "ACCESS KEY ID",
                    "PERMISSION",
                    "CREATED",
                    "LAST USED",
                    "DESCRIPTION",
                ]);
                for k in l.access_keys {
                    t.row(vec![
                        k.access_key_id,
                        k.permission.to_string(),
                        k.create_date.to_string(),
                        k.last_used
                            .map(|t| t.to_string())
                            .unwrap_or_else(|| "-".into()),
                        k.description.unwrap_or_default(),
                    ]);
                }
                t.render()
            })
        }
        AccessKeyCommand::Delete { access_key_id } => {
            let reply = cx
                .send(super::client::ApiRequest::new(
                    Method::DELETE,
                    format!("/v1/access-keys/{}", enc(&access_key_id)),
                ))
                .await?;
            cx.show(&reply, |k: AccessKey| {
                format!("deleted {}\n", k.access_key_id)
            })
        }
    }
}
