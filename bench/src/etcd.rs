//! One benchmark client of etcd over its v3 gRPC API: `KV.Put` of a `payload_bytes`
//! value under the client's own key (write), `KV.Range` of that key with
//! `serializable = false` (a linearizable read). Any member accepts both and forwards to
//! the leader as needed, so there is no leader following here: the client keeps the one
//! endpoint it was given and counts a failure as an error.

use crate::etcdserverpb::kv_client::KvClient;
use crate::etcdserverpb::{PutRequest, RangeRequest};
use anyhow::Context;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct EtcdBench {
    kv: KvClient<Channel>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl EtcdBench {
    /// Connects to `endpoint` and writes the client's key once, so reads find it.
    pub async fn connect(
        endpoint: &str,
        key: String,
        payload_bytes: usize,
    ) -> anyhow::Result<EtcdBench> {
        let mut bench = EtcdBench::new(endpoint, key, payload_bytes, CALL_TIMEOUT)?;
        bench
            .write()
            .await
            .with_context(|| format!("first put to etcd at {endpoint}"))?;
        Ok(bench)
    }

    /// A client of `endpoint` that has not called it yet (the connection is made on the
    /// first call); each call fails after `call_timeout`.
    pub fn new(
        endpoint: &str,
        key: String,
        payload_bytes: usize,
        call_timeout: Duration,
    ) -> anyhow::Result<EtcdBench> {
        let channel = Endpoint::from_shared(format!("http://{endpoint}"))
            .with_context(|| format!("bad etcd endpoint {endpoint:?}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(call_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(EtcdBench {
            kv: KvClient::new(channel),
            key: key.into_bytes(),
            value: vec![b'x'; payload_bytes],
        })
    }

    pub async fn write(&mut self) -> Result<(), tonic::Status> {
        let (key, value) = (self.key.clone(), self.value.clone());
        self.put(key, value).await
    }

    /// `KV.Put` of `value` under `key`.
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), tonic::Status> {
        let request = PutRequest {
            key,
            value,
            lease: 0,
            prev_kv: false,
        };
        self.kv.put(request).await.map(drop)
    }

    pub async fn read(&mut self) -> Result<(), tonic::Status> {
        let request = RangeRequest {
            key: self.key.clone(),
            range_end: Vec::new(),
            limit: 0,
            revision: 0,
            serializable: false,
        };
        let response = self.kv.range(request).await?.into_inner();
        if response.kvs.len() != 1 {
            return Err(tonic::Status::internal(format!(
                "range found {} keys, expected 1",
                response.kvs.len()
            )));
        }
        Ok(())
    }
}
