//! A faithful re-implementation of the seed PR's selection hot path
//! (`get_providers_with_fallback` after its last review round), as the
//! yardstick for `engine/…`. What makes it faithful (each one a way an
//! earlier copy flattered the seed):
//!
//! - one async `RwLock` over both maps (`model_to_providers`,
//!   `pubkey_to_providers`), held for the whole call, and the model's list of
//!   `Arc<dyn _>` cloned per request;
//! - the pubkey intersection builds a new list (filter + collect, pointer
//!   comparison in a nested loop);
//! - the failure-count map behind a std `RwLock` holds an entry for every
//!   provider that ever served (in production: every provider), and the
//!   stable sort looks each one up on every key comparison;
//! - a single candidate returns before sorting, and a leading group of one
//!   takes no round-robin lock; otherwise a `format!`-ed key is advanced
//!   under the round-robin map's write lock.

use std::collections::HashMap;
use std::sync::Arc;

use tiersim_engine::{Operation, Provider};

type P = Arc<dyn Provider>;

fn ptr(p: &P) -> usize {
    Arc::as_ptr(p) as *const () as usize
}

#[derive(Debug)]
pub enum PoolError {
    ModelNotFound,
    NoPubKeyProvider,
}

#[derive(Default)]
struct Mappings {
    model_to_providers: HashMap<String, Vec<P>>,
    pubkey_to_providers: HashMap<String, Vec<P>>,
}

#[derive(Default)]
pub struct Pool {
    mappings: tokio::sync::RwLock<Mappings>,
    failures: std::sync::RwLock<HashMap<usize, u32>>,
    lb_index: std::sync::RwLock<HashMap<String, usize>>,
}

impl Pool {
    /// Registers `providers` for `model`, indexing their signing keys as the
    /// seed's discovery did, and gives each a failure-count entry (it has
    /// served, as every production provider eventually has).
    pub fn insert(&mut self, model: &str, providers: Vec<P>) {
        let m = self.mappings.get_mut();
        for p in &providers {
            for k in p.signing_keys() {
                let list = m.pubkey_to_providers.entry(k.clone()).or_default();
                if !list.iter().any(|q| ptr(q) == ptr(p)) {
                    list.push(p.clone());
                }
            }
            self.failures.get_mut().unwrap().insert(ptr(p), 0);
        }
        m.model_to_providers.insert(model.to_string(), providers);
    }

    pub async fn get_providers_with_fallback(
        &self,
        model: &str,
        op: Operation,
        model_pub_key: Option<&str>,
        client_e2ee: bool,
    ) -> Result<Vec<P>, PoolError> {
        let mappings = self.mappings.read().await;
        let model_providers = mappings
            .model_to_providers
            .get(model)
            .cloned()
            .ok_or(PoolError::ModelNotFound)?;
        let providers = match model_pub_key {
            Some(key) => {
                let keyed = mappings
                    .pubkey_to_providers
                    .get(key)
                    .cloned()
                    .ok_or(PoolError::NoPubKeyProvider)?;
                let filtered: Vec<P> = model_providers
                    .iter()
                    .filter(|p| keyed.iter().any(|q| Arc::ptr_eq(p, q)))
                    .cloned()
                    .collect();
                if filtered.is_empty() {
                    return Err(PoolError::NoPubKeyProvider);
                }
                filtered
            }
            None => model_providers,
        };
        let mut providers = if providers.iter().any(|p| p.tier().is_attested()) {
            providers
                .into_iter()
                .filter(|p| p.tier().is_attested())
                .collect::<Vec<_>>()
        } else {
            providers
        };
        if op.is_streaming() && providers.iter().any(|p| p.capabilities().streaming) {
            providers.retain(|p| p.capabilities().streaming);
        }
        if client_e2ee && providers.iter().any(|p| p.capabilities().client_e2ee) {
            providers.retain(|p| p.capabilities().client_e2ee);
        }
        if providers.is_empty() {
            return Err(PoolError::ModelNotFound);
        }
        if providers.len() == 1 {
            return Ok(providers);
        }
        let lead = {
            let failures = self.failures.read().unwrap();
            let key_of = |p: &P| {
                let f = failures.get(&ptr(p)).copied().unwrap_or(0);
                (f >= 10, p.tier())
            };
            providers.sort_by_key(key_of);
            let first = key_of(&providers[0]);
            providers.iter().take_while(|p| key_of(p) == first).count()
        };
        if lead > 1 {
            let lb_key = match model_pub_key {
                Some(k) => format!("pubkey:{k}"),
                None => format!("id:{model}"),
            };
            let n = {
                let mut lb = self.lb_index.write().unwrap();
                let e = lb.entry(lb_key).or_insert(0);
                let n = *e % lead;
                *e = (*e + 1) % lead;
                n
            };
            providers[..lead].rotate_left(n);
        }
        drop(mappings);
        Ok(providers)
    }
}
