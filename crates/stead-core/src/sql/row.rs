//! Rows as serde values, read in place: a row is a map from column names to values (for a
//! struct), a sequence of values (for a tuple), or, with one column, that value itself.

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

use super::SqlValue;

/// A failure to read a row as the type asked for.
#[derive(Debug)]
pub(crate) struct RowError(pub(crate) String);

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RowError {}

impl de::Error for RowError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        RowError(msg.to_string())
    }
}

/// One row: its columns' names and values.
macro_rules! to_only {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
            ValueDe(self.only()?).$method(v)
        }
    )*};
}

pub(crate) struct RowDe<'a> {
    pub(crate) columns: &'a [String],
    pub(crate) values: &'a [SqlValue],
}

impl<'de> Deserializer<'de> for RowDe<'_> {
    type Error = RowError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
        self.deserialize_map(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
        v.visit_map(Fields {
            columns: self.columns,
            values: self.values,
            at: 0,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, RowError> {
        self.deserialize_map(v)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
        v.visit_seq(Values {
            values: self.values,
            at: 0,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, RowError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, RowError> {
        self.deserialize_seq(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, RowError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
        match self.values {
            [one] => ValueDe(one).deserialize_option(v),
            _ => v.visit_some(self),
        }
    }

    // A single value: the row's only column.
    to_only! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_unit
        deserialize_identifier
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, RowError> {
        ValueDe(self.only()?).deserialize_unit_struct(name, v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, RowError> {
        ValueDe(self.only()?).deserialize_enum(name, variants, v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
        v.visit_unit()
    }
}

impl RowDe<'_> {
    fn only(&self) -> Result<&SqlValue, RowError> {
        match self.values {
            [one] => Ok(one),
            _ => Err(RowError(format!(
                "a row of {} columns read as one value",
                self.values.len()
            ))),
        }
    }
}

struct Fields<'a> {
    columns: &'a [String],
    values: &'a [SqlValue],
    at: usize,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = RowError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, RowError> {
        match self.columns.get(self.at) {
            Some(c) => seed.deserialize(c.as_str().into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, RowError> {
        let v = &self.values[self.at];
        self.at += 1;
        seed.deserialize(ValueDe(v))
    }
}

struct Values<'a> {
    values: &'a [SqlValue],
    at: usize,
}

impl<'de> SeqAccess<'de> for Values<'_> {
    type Error = RowError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, RowError> {
        match self.values.get(self.at) {
            Some(v) => {
                self.at += 1;
                seed.deserialize(ValueDe(v)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.values.len() - self.at)
    }
}

/// One value.
pub(crate) struct ValueDe<'a>(pub(crate) &'a SqlValue);

impl<'de> Deserializer<'de> for ValueDe<'_> {
    type Error = RowError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
        match self.0 {
            SqlValue::Null => v.visit_unit(),
            SqlValue::Integer(i) => v.visit_i64(*i),
            SqlValue::Real(f) => v.visit_f64(*f),
            SqlValue::Text(t) => v.visit_str(t),
            SqlValue::Blob(b) => v.visit_bytes(b),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
        match self.0 {
            SqlValue::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
        match self.0 {
            SqlValue::Integer(i) => v.visit_bool(*i != 0),
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, RowError> {
        match self.0 {
            // A blob read as a sequence (a `Vec<u8>`): its bytes.
            SqlValue::Blob(b) => v.visit_seq(de::value::SeqDeserializer::new(b.iter().copied())),
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, RowError> {
        v.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct tuple tuple_struct map struct enum identifier ignored_any
    }
}
