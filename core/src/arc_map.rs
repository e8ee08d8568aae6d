//! Decoding a map whose values sit behind `Arc` (the copy-on-write state) with one
//! allocation per value. serde's own `Arc<T>` decodes a `Box<T>` and moves it into a new
//! `Arc`: two allocations, a copy and a free per value, which at a million messages was
//! a tenth of a restart's decode. The encoding is the same (serde's `rc` feature encodes
//! an `Arc<T>` as its `T`).

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// For `#[serde(deserialize_with = "crate::arc_map::deserialize")]` on a
/// `BTreeMap<K, Arc<V>>` field.
pub(crate) fn deserialize<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, Arc<V>>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    deserializer.deserialize_map(ArcMapVisitor(PhantomData))
}

struct ArcMapVisitor<K, V>(PhantomData<(K, V)>);

impl<'de, K, V> Visitor<'de> for ArcMapVisitor<K, V>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    type Value = BTreeMap<K, Arc<V>>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = BTreeMap::new();
        while let Some((key, value)) = access.next_entry::<K, V>()? {
            map.insert(key, Arc::new(value));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(deserialize_with = "deserialize")]
        map: BTreeMap<u64, Arc<String>>,
    }

    #[test]
    fn decodes_what_serde_encodes_for_a_map_of_arcs() {
        let holder = Holder {
            map: [
                (1, Arc::new("a".to_owned())),
                (7, Arc::new("bc".to_owned())),
            ]
            .into(),
        };
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&holder, config).expect("encode");
        let plain: BTreeMap<u64, String> = [(1, "a".to_owned()), (7, "bc".to_owned())].into();
        let plain_bytes = bincode::serde::encode_to_vec(&plain, config).expect("encode");
        assert_eq!(bytes, plain_bytes, "an Arc<T> encodes as its T");
        let (decoded, _): (Holder, usize) =
            bincode::serde::decode_from_slice(&bytes, config).expect("decode");
        assert_eq!(decoded, holder);
    }
}
