//! The credit check of creates, on the cluster's ledger ([`crate::credit_ledger`]): a create
//! commits its plan's price for its server before the server's object exists, and only if
//! the account's commitments leave room under its credit. Any number of gateway replicas
//! check against the same ledger; within one gateway the creates of one account take turns
//! at the ledger (they would only conflict with each other there), the rest of each create
//! runs in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::credit_ledger::{Ledger, LedgerError, Reservation};

/// The ledger, and a turn per account.
pub struct Credit {
    ledger: Ledger,
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Credit {
    pub fn new(ledger: Ledger) -> Credit {
        Credit { ledger, turns: Mutex::default() }
    }

    /// The turn of `account`'s writes at the ledger.
    fn turn(&self, account: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.turns.lock().expect("credit lock").entry(account.to_string()).or_default().clone()
    }

    /// Commits `cents` for `server` of `account` within `limit`.
    pub async fn reserve(
        &self,
        account: &str,
        server: &str,
        cents: i64,
        limit: i64,
    ) -> Result<Reservation, LedgerError> {
        let _turn = self.turn(account).lock_owned().await;
        self.ledger.reserve(account, server, cents, limit).await
    }

    /// Changes the commitment of `server` of `account` to `cents` within `limit` (a resize).
    pub async fn recommit(
        &self,
        account: &str,
        server: &str,
        cents: i64,
        limit: i64,
    ) -> Result<Reservation, LedgerError> {
        let _turn = self.turn(account).lock_owned().await;
        self.ledger.recommit(account, server, cents, limit).await
    }

    /// Gives back what a create that failed had committed.
    pub async fn release(&self, account: &str, server: &str) {
        if let Err(e) = self.ledger.release(account, server).await {
            // The operator forgets commitments of servers that never came to be.
            tracing::warn!(account, server, "Could not release a credit reservation: {e}");
        }
    }
}
