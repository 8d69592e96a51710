//! `vps-operator token create|revoke`: the command's flags ([`TokenArgs`]) and what it does
//! with them ([`run`]), on the functions of [`super`].

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kube::Client;

use super::{
    DEFAULT_SYSTEM_NAMESPACE, OUTPUT_TOKEN_KEY, Written, create, create_account_if_absent, create_into_secret,
    revoke_account, revoke_token, secret_exists,
};

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
    /// Create an API token for an account and print it (it is shown only this once), or
    /// write it into a Secret (--output-secret).
    Create {
        /// The VpsAccount the token acts for.
        #[arg(long)]
        account: String,
        /// How long the token works (`30d`, `12h`, ...); for as long as the account lives
        /// when unset.
        #[arg(long, value_parser = crate::flags::duration)]
        expires_in: Option<std::time::Duration>,
        /// Create the account first when it does not exist, owning the namespace of the same
        /// name (created too); an existing account is left as it is.
        #[arg(long)]
        create_account: bool,
        /// With --create-account: the new account's monthly credit, in cents.
        #[arg(long, requires = "create_account", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        credit_cents: i64,
        /// Write the token into this Secret (keys `token` and `account`, owned by the
        /// account) instead of printing it. When the Secret exists nothing is done at all (no
        /// account, no token) and the command succeeds: a re-run is harmless.
        #[arg(long)]
        output_secret: Option<String>,
        /// The namespace of --output-secret (the system namespace when unset).
        #[arg(long, requires = "output_secret")]
        output_namespace: Option<String>,
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
        TokenCommand::Create { account, expires_in, create_account, credit_cents, output_secret, output_namespace } => {
            let output = output_secret
                .as_deref()
                .map(|name| (output_namespace.as_deref().unwrap_or(&args.system_namespace), name));
            // An existing Secret: nothing at all to do (not even the account).
            if let Some((namespace, name)) = output
                && secret_exists(&client, namespace, name).await?
            {
                eprintln!("The Secret {namespace}/{name} exists already: nothing done.");
                return Ok(());
            }
            if create_account && create_account_if_absent(&client, &account, credit_cents).await? {
                eprintln!(
                    "Created the account {account} (namespace {account}, {credit_cents} cents of credit a month)."
                );
            }
            let Some((namespace, name)) = output else {
                println!("{}", create(&client, &args.system_namespace, &account, expires_in).await?);
                return Ok(());
            };
            match create_into_secret(&client, &args.system_namespace, &account, expires_in, (namespace, name)).await? {
                Written::Existed => eprintln!("The Secret {namespace}/{name} exists already: nothing done."),
                Written::Created => eprintln!(
                    "Wrote a token of account {account} into the Secret {namespace}/{name} (key {OUTPUT_TOKEN_KEY})."
                ),
            }
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

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        token: TokenArgs,
    }

    fn parse(args: &[&str]) -> Result<TokenCommand, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(["token"].iter().chain(args)).map(|c| c.token.command)
    }

    #[test]
    fn create_flags_for_the_charts_onboarding_job() {
        let args = [
            "create",
            "--account=demo",
            "--create-account",
            "--credit-cents=10000",
            "--output-secret=vps-initial-token",
            "--expires-in=30d",
        ];
        match parse(&args).unwrap() {
            TokenCommand::Create {
                account,
                expires_in,
                create_account,
                credit_cents,
                output_secret,
                output_namespace,
            } => {
                assert_eq!((account.as_str(), create_account, credit_cents), ("demo", true, 10_000));
                assert_eq!(expires_in, Some(std::time::Duration::from_secs(30 * 86_400)));
                assert_eq!((output_secret.as_deref(), output_namespace), (Some("vps-initial-token"), None));
            }
            other => panic!("{other:?}"),
        }
        // As before: print the token of an existing account.
        assert!(matches!(
            parse(&["create", "--account", "acme"]).unwrap(),
            TokenCommand::Create { create_account: false, credit_cents: 0, output_secret: None, .. }
        ));
        assert!(
            parse(&["create", "--account", "acme", "--credit-cents", "5"]).is_err(),
            "credit without --create-account"
        );
        assert!(parse(&["create", "--account", "acme", "--create-account", "--credit-cents=-5"]).is_err());
        assert!(
            parse(&["create", "--account", "acme", "--output-namespace", "x"]).is_err(),
            "a namespace without a Secret"
        );
    }
}
