//! API tokens: each one a Secret in the system namespace holding only the SHA-256 of the
//! token and the account it acts for. The token itself is printed once, at creation, and
//! kept nowhere.

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

/// The hash and account of a token Secret, when it is one.
pub fn read_token_secret(secret: &Secret) -> Option<(String, String)> {
    let data = secret.data.as_ref()?;
    let hash = String::from_utf8(data.get(HASH_KEY)?.0.clone()).ok()?;
    let account = String::from_utf8(data.get(ACCOUNT_KEY)?.0.clone()).ok()?;
    Some((hash, account))
}

/// Finds the account a token acts for among token Secrets. Compares against every Secret
/// (no early exit), each in constant time.
pub fn account_for_token<'a>(token: &str, secrets: impl IntoIterator<Item = &'a Secret>) -> Option<String> {
    let hash = hash_token(token);
    let mut found = None;
    for secret in secrets {
        if let Some((h, account)) = read_token_secret(secret)
            && hashes_equal(&h, &hash)
        {
            found = Some(account);
        }
    }
    found
}

/// Creates a token for `account` (which must exist) and returns it; only its hash is stored.
pub async fn create(client: &Client, system_namespace: &str, account: &str) -> Result<String> {
    Api::<VpsAccount>::all(client.clone())
        .get_opt(account)
        .await
        .context("look up the account")?
        .with_context(|| format!("no VpsAccount named {account:?}"))?;
    let token = generate_token();
    let hash = hash_token(&token);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("api-token-{}", &hash[..16])),
            labels: Some(BTreeMap::from([
                (TOKEN_LABEL.to_string(), "true".to_string()),
                (ACCOUNT_LABEL.to_string(), account.to_string()),
            ])),
            ..Default::default()
        },
        type_: Some("vps.org/api-token".into()),
        data: Some(BTreeMap::from([
            (HASH_KEY.to_string(), ByteString(hash.into_bytes())),
            (ACCOUNT_KEY.to_string(), ByteString(account.as_bytes().to_vec())),
        ])),
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
        if let Some((h, _)) = read_token_secret(secret)
            && hashes_equal(&h, &hash)
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
        TokenCommand::Create { account } => {
            let token = create(&client, &args.system_namespace, &account).await?;
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
        assert_eq!(account_for_token(&token, &secrets).as_deref(), Some("b"));
        assert_eq!(account_for_token("nope", &secrets), None);
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!hashes_equal("ab", "abc"));
    }
}
