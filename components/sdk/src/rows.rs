//! Rows decoded by column name into any `serde::Deserialize` type: a row
//! of `id, name` becomes `struct User { id: i64, name: String }`. Integers,
//! reals, text and blobs become what the field asks for; NULL becomes
//! `None`.

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

use crate::bindings::corral::service::sqlite::Value;

/// Decodes one row of `columns` into a `T`.
pub fn decode<T: DeserializeOwned>(columns: &[String], values: Vec<Value>) -> Result<T, DecodeError> {
    T::deserialize(RowDeserializer {
        columns,
        values: values.into_iter(),
        index: 0,
    })
}

/// A decoding failure, with the column it happened at.
#[derive(Debug)]
pub struct DecodeError {
    pub column: String,
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<M: std::fmt::Display>(message: M) -> Self {
        DecodeError {
            column: String::new(),
            message: message.to_string(),
        }
    }
}

struct RowDeserializer<'a, I> {
    columns: &'a [String],
    values: I,
    index: usize,
}

impl<'de, I: Iterator<Item = Value>> de::Deserializer<'de> for RowDeserializer<'_, I> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, I: Iterator<Item = Value>> MapAccess<'de> for RowDeserializer<'_, I> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DecodeError> {
        match self.columns.get(self.index) {
            Some(name) => seed.deserialize(name.as_str().into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, DecodeError> {
        let column = self.columns[self.index].clone();
        self.index += 1;
        let value = self.values.next().unwrap_or(Value::Null);
        seed.deserialize(ValueDeserializer(value)).map_err(|mut e| {
            e.column = column;
            e
        })
    }
}

/// One column's value.
struct ValueDeserializer(Value);

impl<'de> de::Deserializer<'de> for ValueDeserializer {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            Value::Integer(n) => visitor.visit_i64(n),
            Value::Real(n) => visitor.visit_f64(n),
            Value::Text(s) => visitor.visit_string(s),
            Value::Blob(b) => visitor.visit_byte_buf(b),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    /// SQLite keeps booleans as integers.
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Integer(n) => visitor.visit_bool(n != 0),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Text(s) => visitor.visit_enum(s.into_deserializer()),
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct User {
        id: i64,
        name: String,
        nick: Option<String>,
        admin: bool,
    }

    #[test]
    fn rows_decode_by_column_name() {
        let columns: Vec<String> = ["name", "id", "admin", "nick"].map(String::from).to_vec();
        let values = vec![
            Value::Text("Ada".into()),
            Value::Integer(7),
            Value::Integer(1),
            Value::Null,
        ];
        let user: User = decode(&columns, values).unwrap();
        assert_eq!(
            user,
            User {
                id: 7,
                name: "Ada".into(),
                nick: None,
                admin: true
            }
        );
        let wrong = vec![Value::Integer(3), Value::Integer(7), Value::Integer(0), Value::Null];
        match decode::<User>(&columns, wrong) {
            Err(DecodeError { column, .. }) => assert_eq!(column, "name"),
            other => panic!("{other:?}"),
        }
    }
}
