//! A faithful re-implementation of the seed PR's selection hot path
//! (`get_providers_with_fallback` after its last review round), as the
//! yardstick for `engine/…`: async `RwLock` maps of `Arc<dyn _>` lists that are
//! cloned per request, pubkey intersection by pointer in a nested loop, a
//! stable sort whose key reads failure counts from a `HashMap` behind a std
//! `RwLock`, and a `format!`-ed round-robin key advanced under a write lock.

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
pub struct Pool {
    model_to_providers: tokio::sync::RwLock<HashMap<String, Vec<P>>>,
    pubkey_to_providers: tokio::sync::RwLock<HashMap<String, Vec<P>>>,
    failures: std::sync::RwLock<HashMap<usize, u32>>,
    lb_index: std::sync::RwLock<HashMap<String, usize>>,
}

impl Pool {
    /// Registers `providers` for `model`, indexing their signing keys as the
    /// seed's discovery did.
    pub fn insert(&mut self, model: &str, providers: Vec<P>) {
        for p in &providers {
            for k in p.signing_keys() {
                let list = self
                    .pubkey_to_providers
                    .get_mut()
                    .entry(k.clone())
                    .or_default();
                if !list.iter().any(|q| ptr(q) == ptr(p)) {
                    list.push(p.clone());
                }
            }
        }
        self.model_to_providers
            .get_mut()
            .insert(model.to_string(), providers);
    }

    pub async fn get_providers_with_fallback(
        &self,
        model: &str,
        op: Operation,
        model_pub_key: Option<&str>,
        client_e2ee: bool,
    ) -> Result<Vec<P>, PoolError> {
        let mut providers = {
            let map = self.model_to_providers.read().await;
            map.get(model).cloned().ok_or(PoolError::ModelNotFound)?
        };
        if let Some(key) = model_pub_key {
            let keyed = {
                let map = self.pubkey_to_providers.read().await;
                map.get(key).cloned().ok_or(PoolError::NoPubKeyProvider)?
            };
            providers.retain(|p| keyed.iter().any(|q| ptr(q) == ptr(p)));
            if providers.is_empty() {
                return Err(PoolError::NoPubKeyProvider);
            }
        }
        if providers.iter().any(|p| p.tier().is_attested()) {
            providers.retain(|p| p.tier().is_attested());
        }
        if op.is_streaming() && providers.iter().any(|p| p.capabilities().streaming) {
            providers.retain(|p| p.capabilities().streaming);
        }
        if client_e2ee && providers.iter().any(|p| p.capabilities().client_e2ee) {
            providers.retain(|p| p.capabilities().client_e2ee);
        }
        let key_of = |p: &P, failures: &HashMap<usize, u32>| {
            let f = failures.get(&ptr(p)).copied().unwrap_or(0);
            (f >= 10, p.tier())
        };
        let lead = {
            let failures = self.failures.read().unwrap();
            providers.sort_by_key(|p| key_of(p, &failures));
            let first = key_of(&providers[0], &failures);
            providers
                .iter()
                .take_while(|p| key_of(p, &failures) == first)
                .count()
        };
        let lb_key = match model_pub_key {
            Some(k) => format!("pubkey:{model}:{k}"),
            None => format!("model:{model}"),
        };
        let n = {
            let mut lb = self.lb_index.write().unwrap();
            let e = lb.entry(lb_key).or_insert(0);
            let n = *e;
            *e = e.wrapping_add(1);
            n
        };
        if lead > 1 {
            providers[..lead].rotate_left(n % lead);
        }
        Ok(providers)
    }
}
