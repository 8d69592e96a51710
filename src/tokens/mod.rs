//! API tokens: each one a Secret in the system namespace holding only the SHA-256 of the
//! token, the account it acts for and that account's UID (so an account deleted and made
//! again under the same name is not served by the old one's tokens), and optionally when it
//! expires. The Secret is owned by the account: it goes when the account goes. The token
//! itself is printed once, at creation, and kept nowhere, unless `token create
//! --output-secret` is asked to write it into a Secret of its own (the Helm chart's
//! onboarding Job does, like Argo CD's initial admin secret), which the account also owns.

pub mod cli;

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{ACCOUNT_LABEL, VpsAccount, VpsAccountSpec};

pub use cli::{TokenArgs, TokenCommand, run};

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
/// Key of the plaintext token in a Secret written by `token create --output-secret`.
pub const OUTPUT_TOKEN_KEY: &str = "token";

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

/// The account `account`, which must exist and not be going.
async fn live_account(client: &Client, account: &str) -> Result<VpsAccount> {
    let owner = Api::<VpsAccount>::all(client.clone())
        .get_opt(account)
        .await
        .context("look up the account")?
        .with_context(|| format!("no VpsAccount named {account:?}"))?;
    if owner.metadata.deletion_timestamp.is_some() {
        bail!("the VpsAccount {account:?} is being deleted");
    }
    Ok(owner)
}

/// A reference to `account` as the owner of a Secret (without `blockOwnerDeletion`, which
/// would need rights on the account's finalizers).
fn owner_reference(account: &VpsAccount) -> Result<OwnerReference> {
    Ok(OwnerReference {
        api_version: "vps.org/v1alpha1".into(),
        kind: "VpsAccount".into(),
        name: account.name_any(),
        uid: account.uid().context("the account has no uid")?,
        ..Default::default()
    })
}

/// Creates a token for `account` (which must exist), valid for `lifetime` when given, and
/// returns it; only its hash is stored.
pub async fn create(
    client: &Client,
    system_namespace: &str,
    account: &str,
    lifetime: Option<std::time::Duration>,
) -> Result<String> {
    create_for(client, system_namespace, &live_account(client, account).await?, lifetime).await
}

/// [`create`] for an account already looked up.
async fn create_for(
    client: &Client,
    system_namespace: &str,
    owner: &VpsAccount,
    lifetime: Option<std::time::Duration>,
) -> Result<String> {
    let account = owner.name_any();
    let owner = owner_reference(owner)?;
    let token = generate_token();
    let hash = hash_token(&token);
    let mut data = BTreeMap::from([
        (HASH_KEY.to_string(), ByteString(hash.clone().into_bytes())),
        (ACCOUNT_KEY.to_string(), ByteString(account.as_bytes().to_vec())),
        (ACCOUNT_UID_KEY.to_string(), ByteString(owner.uid.clone().into_bytes())),
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
                (ACCOUNT_LABEL.to_string(), account.clone()),
            ])),
            // The token goes with its account (kube-controller-manager's garbage collector).
            owner_references: Some(vec![owner]),
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

/// Creates the account `name`, owning the namespace `name` (created too when missing), with
/// `credit_cents` of monthly credit, unless an account of that name exists: that one is left
/// as it is (its credit and namespace unchanged). Returns whether it was created. Needs only
/// `get` (of these names) and `create` on namespaces and VpsAccounts.
pub async fn create_account_if_absent(client: &Client, name: &str, credit_cents: i64) -> Result<bool> {
    let accounts = Api::<VpsAccount>::all(client.clone());
    if accounts.get_opt(name).await.context("look up the account")?.is_some() {
        return Ok(false);
    }
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces.get_opt(name).await.context("look up the account's namespace")?.is_none() {
        let namespace = Namespace {
            metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
            ..Default::default()
        };
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("create the namespace {name}")),
        }
    }
    let account =
        VpsAccount::new(name, VpsAccountSpec { namespace: name.to_string(), credit_cents, funds_cents: None });
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e).with_context(|| format!("create the VpsAccount {name}")),
    }
}

/// The Secret `name` of `namespace` holding `token` in plaintext (key [`OUTPUT_TOKEN_KEY`])
/// and the account's name (key [`ACCOUNT_KEY`]), owned by the account. It carries no
/// [`TOKEN_LABEL`] and no hash: the gateway never takes it for a token record.
pub fn output_secret(namespace: &str, name: &str, owner: &VpsAccount, token: &str) -> Result<Secret> {
    let account = owner.name_any();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(ACCOUNT_LABEL.to_string(), account.clone())])),
            owner_references: Some(vec![owner_reference(owner)?]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (OUTPUT_TOKEN_KEY.to_string(), ByteString(token.as_bytes().to_vec())),
            (ACCOUNT_KEY.to_string(), ByteString(account.into_bytes())),
        ])),
        ..Default::default()
    })
}

/// What [`create_into_secret`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The Secret was there already: nothing was done.
    Existed,
    /// A new token was written into the Secret.
    Created,
}

/// Whether the Secret `name` of `namespace` exists.
pub async fn secret_exists(client: &Client, namespace: &str, name: &str) -> Result<bool> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    Ok(secrets.get_opt(name).await.with_context(|| format!("look up the Secret {namespace}/{name}"))?.is_some())
}

/// Creates a token for `account` (which must exist), valid for `lifetime` when given, and
/// writes it into the Secret `name` of `namespace` ([`output_secret`]), unless that Secret
/// exists: then nothing is done, so that a re-run is harmless. Needs `get` of that Secret and
/// `create` of Secrets.
pub async fn create_into_secret(
    client: &Client,
    system_namespace: &str,
    account: &str,
    lifetime: Option<std::time::Duration>,
    (namespace, name): (&str, &str),
) -> Result<Written> {
    if secret_exists(client, namespace, name).await? {
        return Ok(Written::Existed);
    }
    let owner = live_account(client, account).await?;
    // The token first: should what follows fail, a token nobody knows is left (harmless; it
    // goes with the account) rather than a Secret holding a token that does not work.
    let token = create_for(client, system_namespace, &owner, lifetime).await?;
    let secret = output_secret(namespace, name, &owner, &token)?;
    match Api::<Secret>::namespaced(client.clone(), namespace).create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Written::Created),
        // Written meanwhile by another run: that one's token stands.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Written::Existed),
        Err(e) => Err(e).with_context(|| format!("create the Secret {namespace}/{name}")),
    }
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

    #[test]
    fn an_output_secret_holds_the_token_for_people_and_is_no_token_record() {
        let mut account = VpsAccount::new(
            "demo",
            VpsAccountSpec { namespace: "demo".into(), credit_cents: 10_000, funds_cents: None },
        );
        assert!(output_secret("vps-system", "vps-initial-token", &account, "vps_x").is_err(), "an account without uid");
        account.metadata.uid = Some("uid-demo".into());
        let secret = output_secret("vps-system", "vps-initial-token", &account, "vps_x").unwrap();
        assert_eq!(
            (secret.metadata.name.as_deref(), secret.metadata.namespace.as_deref()),
            (Some("vps-initial-token"), Some("vps-system"))
        );
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data[OUTPUT_TOKEN_KEY].0, b"vps_x");
        assert_eq!(data[ACCOUNT_KEY].0, b"demo");
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("VpsAccount", "demo", "uid-demo"));
        assert_eq!(owner.block_owner_deletion, None, "that would need rights on the account's finalizers");
        // The gateway never takes it for a token: no label, no hash.
        assert!(!secret.metadata.labels.as_ref().unwrap().contains_key(TOKEN_LABEL));
        assert_eq!(read_token_secret(&secret), None);
        assert_eq!(record_for_token("vps_x", [&secret]), None);
    }
}
