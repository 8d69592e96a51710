//! The credit check of creates, on the cluster's ledger ([`crate::credit_ledger`]): a create
//! commits its plan's price for its server before the server's object exists, and only if
//! the account's commitments leave room under its credit. Any number of gateway replicas
//! check against the same ledger. Within one gateway the reservations of one account are
//! committed together: those that arrive while a write to the account's ledger is under way
//! wait and go in the next write, one compare-and-swap for all of them (decided in order),
//! so concurrent creates of one account cost one ledger write per batch instead of one each
//! in turn. The batches are written by a task of their own: a create that is given up does
//! not stop the others'.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::credit_ledger::{Ask, Ledger, LedgerError, Reservation};

type Answer = oneshot::Sender<Result<Reservation, LedgerError>>;

/// The reservations of one account waiting for the next write, and whether a writer runs.
#[derive(Default)]
struct Batch {
    waiting: Vec<(Ask, Answer)>,
    writing: bool,
}

/// The ledger, a batch and a turn per account.
pub struct Credit {
    ledger: Ledger,
    batches: Mutex<HashMap<String, Arc<Mutex<Batch>>>>,
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Credit {
    pub fn new(ledger: Ledger) -> Credit {
        Credit { ledger, batches: Mutex::default(), turns: Mutex::default() }
    }

    /// The turn of `account`'s writes at the ledger.
    fn turn(&self, account: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.turns.lock().expect("credit lock").entry(account.to_string()).or_default().clone()
    }

    fn batch(&self, account: &str) -> Arc<Mutex<Batch>> {
        self.batches.lock().expect("credit lock").entry(account.to_string()).or_default().clone()
    }

    /// Commits `cents` for `server` of `account` within `limit`.
    pub async fn reserve(
        self: &Arc<Self>,
        account: &str,
        server: &str,
        cents: i64,
        limit: i64,
    ) -> Result<Reservation, LedgerError> {
        let (tx, rx) = oneshot::channel();
        let batch = self.batch(account);
        let start_writer = {
            let mut b = batch.lock().expect("credit lock");
            b.waiting.push((Ask { server: server.to_string(), cents, limit }, tx));
            !std::mem::replace(&mut b.writing, true)
        };
        if start_writer {
            tokio::spawn(self.clone().write_batches(account.to_string(), batch));
        }
        rx.await.unwrap_or_else(|_| Err(LedgerError::Batch("the credit ledger's writer stopped".into())))
    }

    /// Writes `account`'s waiting reservations, a batch per compare-and-swap, until none wait.
    async fn write_batches(self: Arc<Self>, account: String, batch: Arc<Mutex<Batch>>) {
        let _turn = self.turn(&account).lock_owned().await;
        loop {
            let waiting = {
                let mut b = batch.lock().expect("credit lock");
                if b.waiting.is_empty() {
                    b.writing = false;
                    return;
                }
                std::mem::take(&mut b.waiting)
            };
            let asks: Vec<Ask> = waiting.iter().map(|(ask, _)| ask.clone()).collect();
            match self.ledger.reserve_all(&account, &asks).await {
                Ok(answers) => {
                    for ((_, tx), answer) in waiting.into_iter().zip(answers) {
                        let _ = tx.send(Ok(answer));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for (_, tx) in waiting {
                        let _ = tx.send(Err(LedgerError::Batch(message.clone())));
                    }
                }
            }
        }
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
