//! API tokens: each one a Secret in the system namespace holding only the SHA-256 of the
//! token, the account it acts for and that account's UID (so an account deleted and made
//! again under the same name is not served by the old one's tokens), and optionally when it
//! expires. The Secret is owned by the account: it goes when the account goes. The token
//! itself is printed once, at creation, and kept nowhere.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{ACCOUNT_LABEL, VpsAccount};

/// Label marking a Secret as an API token.
pub const TOKEN_LABEL: &str = "vps.org/api-token";
/// Secret key holding the hex SHA-256 of the token.
pub const HASH_KEY: &str = "sha256";
/// Secret key holding the account name.
pub const ACCOUNT_KEY: &str = "account";
/// Secret key holding the account's UID.
pub const ACCOUNT_UID_KEY: &str = "account-uid";
/// Secret key holding when the token stops working (RFC 3339), if it does.
pub const EXPIRES_KEY: &str = "expires-at";
/// The default namespace of the gateway's own objects.
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "vps-system";

/// The hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random token: `vps_` and 64 hex digits (256 bits).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    format!("vps_{}", hex::encode(bytes))
}

/// Compares two hashes in constant time.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// What a token Secret says of its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The hex SHA-256 of the token.
    pub hash: String,
    pub account: String,
    /// The UID of the account it was made for (tokens made before UIDs were kept have none,
    /// and act for nobody).
    pub account_uid: Option<String>,
    pub expires_at: Option<jiff::Timestamp>,
}

impl TokenRecord {
    /// Whether the token acts for the account `account_uid` at `now`.
    pub fn valid_for(&self, account_uid: Option<&str>, now: jiff::Timestamp) -> bool {
        self.account_uid.is_some()
            && self.account_uid.as_deref() == account_uid
            && self.expires_at.is_none_or(|t| now < t)
    }
}

/// The record of a token Secret, when it is one.
pub fn read_token_secret(secret: &Secret) -> Option<TokenRecord> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok());
    Some(TokenRecord {
        hash: text(HASH_KEY)?,
        account: text(ACCOUNT_KEY)?,
        account_uid: text(ACCOUNT_UID_KEY),
        expires_at: text(EXPIRES_KEY).and_then(|t| t.parse().ok()),
    })
}

/// Finds the record of a token among token Secrets. Compares against every Secret (no early
/// exit), each in constant time.
pub fn record_for_token<'a>(token: &str, secrets: impl IntoIterator<Item = &'a Secret>) -> Option<TokenRecord> {
    let hash = hash_token(token);
    let mut found = None;
    for secret in secrets {
        if let Some(record) = read_token_secret(secret)
            && hashes_equal(&record.hash, &hash)
        {
            found = Some(record);
        }
    }
    found
}

/// Creates a token for `account` (which must exist), valid for `lifetime` when given, and
/// returns it; only its hash is stored.
pub async fn create(
    client: &Client,
    system_namespace: &str,
    account: &str,
    lifetime: Option<std::time::Duration>,
) -> Result<String> {
    let owner = Api::<VpsAccount>::all(client.clone())
        .get_opt(account)
        .await
        .context("look up the account")?
        .with_context(|| format!("no VpsAccount named {account:?}"))?;
    if owner.metadata.deletion_timestamp.is_some() {
        bail!("the VpsAccount {account:?} is being deleted");
    }
    let uid = owner.uid().context("the account has no uid")?;
    let token = generate_token();
    let hash = hash_token(&token);
    let mut data = BTreeMap::from([
        (HASH_KEY.to_string(), ByteString(hash.clone().into_bytes())),
        (ACCOUNT_KEY.to_string(), ByteString(account.as_bytes().to_vec())),
        (ACCOUNT_UID_KEY.to_string(), ByteString(uid.clone().into_bytes())),
    ]);
    if let Some(lifetime) = lifetime {
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::try_from(lifetime)?;
        data.insert(EXPIRES_KEY.to_string(), ByteString(expires.to_string().into_bytes()));
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("api-token-{}", &hash[..16])),
            labels: Some(BTreeMap::from([
                (TOKEN_LABEL.to_string(), "true".to_string()),
                (ACCOUNT_LABEL.to_string(), account.to_string()),
            ])),
            // The token goes with its account (kube-controller-manager's garbage collector).
            owner_references: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "vps.org/v1alpha1".into(),
                kind: "VpsAccount".into(),
                name: account.to_string(),
                uid,
                ..Default::default()
            }]),
            ..Default::default()
        },
        type_: Some("vps.org/api-token".into()),
        data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), system_namespace)
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("create the token Secret in namespace {system_namespace}"))?;
    Ok(token)
}

/// Deletes the Secret of one token; returns whether it existed.
pub async fn revoke_token(client: &Client, system_namespace: &str, token: &str) -> Result<bool> {
    let api = Api::<Secret>::namespaced(client.clone(), system_namespace);
    let secrets = api.list(&ListParams::default().labels(&format!("{TOKEN_LABEL}=true"))).await?;
    let hash = hash_token(token);
    let mut revoked = false;
    for secret in &secrets.items {
        if let Some(record) = read_token_secret(secret)
            && hashes_equal(&record.hash, &hash)
        {
            api.delete(&secret.name_any(), &DeleteParams::default()).await?;
            revoked = true;
        }
    }
    Ok(revoked)
}

/// Deletes every token of an account; returns how many there were.
pub async fn revoke_account(client: &Client, system_namespace: &str, account: &str) -> Result<usize> {
    let api = Api::<Secret>::namespaced(client.clone(), system_namespace);
    let secrets =
        api.list(&ListParams::default().labels(&format!("{TOKEN_LABEL}=true,{ACCOUNT_LABEL}={account}"))).await?;
    for secret in &secrets.items {
        api.delete(&secret.name_any(), &DeleteParams::default()).await?;
    }
    Ok(secrets.items.len())
}

/// Flags of `vps-operator token`.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// Namespace holding the token Secrets.
    #[arg(long, env = "VPS_SYSTEM_NAMESPACE", default_value = DEFAULT_SYSTEM_NAMESPACE, global = true)]
    pub system_namespace: String,
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// `vps-operator token create|revoke`.
#[derive(Subcommand, Debug, Clone)]
pub enum TokenCommand {
    /// Create an API token for an account and print it (it is shown only this once).
    Create {
        /// The VpsAccount the token acts for.
        #[arg(long)]
        account: String,
        /// How long the token works (`30d`, `12h`, ...); for as long as the account lives
        /// when unset.
        #[arg(long, value_parser = crate::flags::duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// Revoke one token (--token) or every token of an account (--account).
    Revoke {
        /// The token to revoke (read from the VPS_API_TOKEN variable when set).
        #[arg(long, env = "VPS_API_TOKEN", conflicts_with = "account", hide_env_values = true)]
        token: Option<String>,
        /// Revoke every token of this account.
        #[arg(long)]
        account: Option<String>,
    },
}

/// Runs `vps-operator token ...` against the cluster of the current kubeconfig.
pub async fn run(args: TokenArgs) -> Result<()> {
    let client = Client::try_default().await.context("connect to the cluster")?;
    match args.command {
        TokenCommand::Create { account, expires_in } => {
            let token = create(&client, &args.system_namespace, &account, expires_in).await?;
            println!("{token}");
        }
        TokenCommand::Revoke { token: Some(token), .. } => {
            if !revoke_token(&client, &args.system_namespace, &token).await? {
                bail!("no such token");
            }
            eprintln!("Revoked the token.");
        }
        TokenCommand::Revoke { account: Some(account), .. } => {
            let n = revoke_account(&client, &args.system_namespace, &account).await?;
            eprintln!("Revoked {n} token(s) of account {account}.");
        }
        TokenCommand::Revoke { .. } => bail!("give --token or --account"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(hash: &str, account: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([
                (HASH_KEY.to_string(), ByteString(hash.as_bytes().to_vec())),
                (ACCOUNT_KEY.to_string(), ByteString(account.as_bytes().to_vec())),
                (ACCOUNT_UID_KEY.to_string(), ByteString(format!("uid-{account}").into_bytes())),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn tokens_are_found_by_hash_only() {
        let token = generate_token();
        assert!(token.starts_with("vps_") && token.len() == 68);
        assert_ne!(token, generate_token());
        let secrets = [secret(&hash_token("other"), "a"), secret(&hash_token(&token), "b")];
        let record = record_for_token(&token, &secrets).unwrap();
        assert_eq!((record.account.as_str(), record.account_uid.as_deref()), ("b", Some("uid-b")));
        assert_eq!(record_for_token("nope", &secrets), None);
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!hashes_equal("ab", "abc"));
    }

    #[test]
    fn a_token_acts_only_for_its_account_and_only_until_it_expires() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let record = TokenRecord {
            hash: "h".into(),
            account: "acme".into(),
            account_uid: Some("uid-1".into()),
            expires_at: Some("2026-01-02T00:00:00Z".parse().unwrap()),
        };
        assert!(record.valid_for(Some("uid-1"), now));
        assert!(!record.valid_for(Some("uid-2"), now), "an account made again under the same name");
        assert!(!record.valid_for(None, now));
        assert!(!record.valid_for(Some("uid-1"), "2026-01-02T00:00:00Z".parse().unwrap()), "expired");
        let old = TokenRecord { account_uid: None, expires_at: None, ..record };
        assert!(!old.valid_for(Some("uid-1"), now), "a token without its account's uid acts for nobody");
    }
}
