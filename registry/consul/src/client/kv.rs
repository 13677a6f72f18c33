//! KV: reads (plain and blocking), key listings, writes with check-and-set and locks, deletes.

use std::time::Duration;

use reqwest::Method;

use super::{Client, ClientError};
use crate::types::KvEntry;

/// A KV entry with its value decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: Option<String>,
}

impl From<KvEntry> for KvPair {
    fn from(e: KvEntry) -> Self {
        Self {
            key: e.key,
            value: e.value.unwrap_or_default(),
            flags: e.flags,
            create_index: e.create_index,
            modify_index: e.modify_index,
            lock_index: e.lock_index,
            session: e.session.filter(|s| !s.is_empty()),
        }
    }
}

/// Options of a KV PUT: at most one of `cas`, `acquire` and `release`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub flags: u64,
    pub cas: Option<u64>,
    pub acquire: Option<String>,
    pub release: Option<String>,
}

impl Client {
    /// Reads one key; `None` if absent.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvPair>, ClientError> {
        Ok(self.kv_get_blocking_inner(key, None).await?.0)
    }

    /// Blocks until the key's index passes `index` (or `wait` elapses); returns the entry and
    /// the index to pass next time.
    pub async fn kv_get_blocking(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Option<KvPair>, u64), ClientError> {
        self.kv_get_blocking_inner(key, Some((index, wait))).await
    }

    async fn kv_get_blocking_inner(
        &self,
        key: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<KvPair>, u64), ClientError> {
        let mut builder = self.request(Method::GET, &Self::kv_path(key));
        if let Some((index, wait)) = block {
            builder = Self::blocking(builder, index, wait);
        }
        let (entries, index) = Self::json_or_404::<Vec<KvEntry>>(builder).await?;
        Ok((
            entries.and_then(|e| e.into_iter().next()).map(KvPair::from),
            index,
        ))
    }

    /// Every entry under `prefix`, in key order (empty if none).
    pub async fn kv_list(&self, prefix: &str) -> Result<Vec<KvPair>, ClientError> {
        Ok(self.kv_list_inner(prefix, None).await?.0)
    }

    /// Blocking form of [`Client::kv_list`].
    pub async fn kv_list_blocking(
        &self,
        prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<KvPair>, u64), ClientError> {
        self.kv_list_inner(prefix, Some((index, wait))).await
    }

    async fn kv_list_inner(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<KvPair>, u64), ClientError> {
        let mut builder = self
            .request(Method::GET, &Self::kv_path(prefix))
            .query(&[("recurse", "")]);
        if let Some((index, wait)) = block {
            builder = Self::blocking(builder, index, wait);
        }
        let (entries, index) = Self::json_or_404::<Vec<KvEntry>>(builder).await?;
        Ok((
            entries
                .unwrap_or_default()
                .into_iter()
                .map(KvPair::from)
                .collect(),
            index,
        ))
    }

    /// Key names under `prefix`, cut after `separator` when given.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
    ) -> Result<Vec<String>, ClientError> {
        let mut builder = self
            .request(Method::GET, &Self::kv_path(prefix))
            .query(&[("keys", "")]);
        if let Some(sep) = separator {
            builder = builder.query(&[("separator", sep)]);
        }
        Ok(Self::json_or_404::<Vec<String>>(builder)
            .await?
            .0
            .unwrap_or_default())
    }

    /// Writes a value; `true` on success.
    pub async fn kv_put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<bool, ClientError> {
        self.kv_put_with(key, value, &PutOptions::default()).await
    }

    /// Writes a value with flags, check-and-set or lock options; `false` if refused.
    pub async fn kv_put_with(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: &PutOptions,
    ) -> Result<bool, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if options.flags != 0 {
            query.push(("flags", options.flags.to_string()));
        }
        if let Some(cas) = options.cas {
            query.push(("cas", cas.to_string()));
        }
        if let Some(session) = &options.acquire {
            query.push(("acquire", session.clone()));
        }
        if let Some(session) = &options.release {
            query.push(("release", session.clone()));
        }
        let builder = self
            .request(Method::PUT, &Self::kv_path(key))
            .query(&query)
            .body(value.into());
        Self::json(builder).await
    }

    /// Deletes a key (succeeds if absent).
    pub async fn kv_delete(&self, key: &str) -> Result<(), ClientError> {
        Self::send_ok(self.request(Method::DELETE, &Self::kv_path(key)))
            .await
            .map(drop)
    }

    /// Deletes every key under `prefix`.
    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<(), ClientError> {
        Self::send_ok(
            self.request(Method::DELETE, &Self::kv_path(prefix))
                .query(&[("recurse", "")]),
        )
        .await
        .map(drop)
    }

    /// Deletes a key only if its ModifyIndex is `index`; `false` if it changed.
    pub async fn kv_delete_cas(&self, key: &str, index: u64) -> Result<bool, ClientError> {
        let builder = self
            .request(Method::DELETE, &Self::kv_path(key))
            .query(&[("cas", index.to_string())]);
        Self::json(builder).await
    }
}
