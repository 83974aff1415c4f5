//! Object identities.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Version tag mixed into every name-derived id; bump only with a data migration.
const NAME_ID_PREFIX: &[u8] = b"stead/object-id/v1\0";

/// The hashing of maps keyed by object: ids are SHA-256 digests or random, so a fast,
/// unkeyed hash of them is as good as a keyed one.
pub(crate) type IdHashState = foldhash::fast::RandomState;

/// The 32-byte identity of a durable object, shown as 64 lowercase hex characters.
///
/// ```
/// use stead_core::ObjectId;
/// let id = ObjectId::from_name("counter", "page-views");
/// let text = id.to_string();
/// assert_eq!(text.len(), 64);
/// assert_eq!(text.parse::<ObjectId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

impl ObjectId {
    /// The greatest id, for cursors that must sort after every id.
    pub(crate) const MAX: ObjectId = ObjectId([0xff; 32]);

    /// The id of the object called `name` in class `class`: SHA-256 over a versioned prefix,
    /// the class and the name. The same on every run and every machine.
    pub fn from_name(class: &str, name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(NAME_ID_PREFIX);
        h.update((class.len() as u64).to_be_bytes());
        h.update(class.as_bytes());
        h.update(name.as_bytes());
        let out = h.finalize();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&out);
        ObjectId(bytes)
    }

    /// A fresh random id.
    pub fn random() -> Self {
        ObjectId(rand::random())
    }

    /// The id with these raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ObjectId(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex characters (either case).
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() != 64 {
            return Err(Error::InvalidId);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| Error::InvalidId)?;
        Ok(ObjectId(bytes))
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        // Infallible: the buffer is exactly twice the input length.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl FromStr for ObjectId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ObjectId::parse(s)
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ObjectId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_ids_are_stable() {
        // A fixed test vector, computed independently as
        // sha256(b"stead/object-id/v1\0" + u64_be(len(class)) + class + name).
        // Changing the derivation orphans every stored object.
        let id = ObjectId::from_name("counter", "page-views");
        assert_eq!(id, ObjectId::from_name("counter", "page-views"));
        assert_eq!(
            id.to_string(),
            "b33b174af5b41122b63c306fe794cf62b2be3c4761c5f0ab12da1dffc1e77b48"
        );
    }

    #[test]
    fn class_and_name_do_not_collide() {
        assert_ne!(
            ObjectId::from_name("ab", "c"),
            ObjectId::from_name("a", "bc")
        );
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert!(ObjectId::parse("zz").is_err());
        assert!(ObjectId::parse(&"g".repeat(64)).is_err());
        let id = ObjectId::random();
        assert_eq!(ObjectId::parse(&id.to_string().to_uppercase()).unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ObjectId>(&json).unwrap(), id);
    }
}
