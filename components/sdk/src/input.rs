//! Typed input: a JSON body decodes into a struct with serde, and every
//! field at fault is reported at once, in one 400 `validation` problem:
//! wrong types, missing and unknown fields first, then the struct's own
//! rules ([`Validate`]). A handler only ever sees checked values.
//!
//! ```no_run
//! # use corral_sdk::{Check, Problem, Request, Validate};
//! #[derive(serde::Deserialize)]
//! struct NewUser { name: String, email: Option<String> }
//!
//! impl Validate for NewUser {
//!     fn validate(&self, check: &mut Check) {
//!         check.that("name", !self.name.trim().is_empty(), "must not be empty");
//!     }
//! }
//!
//! fn create(request: &Request) -> Result<(), Problem> {
//!     let user: NewUser = request.json()?;
//!     Ok(())
//! }
//! ```
//!
//! Optional fields are `Option`s; every other field is required. Unknown
//! fields are errors.

use std::cell::RefCell;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::http::{FieldError, Problem, Request};

/// The rules a request body follows beyond its types.
pub trait Validate {
    /// Records every rule `self` breaks; the default has none.
    fn validate(&self, check: &mut Check) {
        let _ = check;
    }
}

/// The errors found so far. A rule on a field already at fault (of the
/// wrong type, say, or failing an earlier rule) is not checked again.
#[derive(Default)]
pub struct Check {
    prefix: String,
    errors: Vec<FieldError>,
}

impl Check {
    /// Records `message` against `field` unless `ok`.
    pub fn that(&mut self, field: &str, ok: bool, message: impl Into<String>) -> &mut Self {
        let path = self.path(field);
        if !ok && !self.at_fault(&path) {
            self.errors.push(FieldError {
                field: path,
                message: message.into(),
            });
        }
        self
    }

    /// `value` has something besides whitespace.
    pub fn not_blank(&mut self, field: &str, value: &str) -> &mut Self {
        self.that(field, !value.trim().is_empty(), "must not be empty")
    }

    /// `value` has at most `max` characters.
    pub fn max_chars(&mut self, field: &str, value: &str, max: usize) -> &mut Self {
        self.that(
            field,
            value.chars().count() <= max,
            format!("must be at most {max} characters"),
        )
    }

    /// `value` looks like an email address (see [`is_email`]).
    pub fn email(&mut self, field: &str, value: &str) -> &mut Self {
        self.that(
            field,
            is_email(value),
            "must be an email address such as ada@example.com",
        )
    }

    /// Checks each of `items` by its own rules, as `field[0]`, `field[1]` ...
    pub fn each<T: Validate>(&mut self, field: &str, items: &[T]) -> &mut Self {
        for (index, item) in items.iter().enumerate() {
            let mut nested = Check {
                prefix: format!("{}[{index}].", self.path(field)),
                errors: std::mem::take(&mut self.errors),
            };
            item.validate(&mut nested);
            self.errors = nested.errors;
        }
        self
    }

    /// Whether `field` (with this check's prefix) or anything inside it is at fault.
    pub fn is_at_fault(&self, field: &str) -> bool {
        self.at_fault(&self.path(field))
    }

    fn path(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    /// Whether `path`, anything inside it, or anything it is inside, is at fault.
    fn at_fault(&self, path: &str) -> bool {
        let within = |inner: &str, outer: &str| {
            inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        self.errors
            .iter()
            .any(|e| within(&e.field, path) || (!e.field.is_empty() && within(path, &e.field)))
    }

    /// The problem to answer with, if anything is at fault.
    pub fn finish(self) -> Result<(), Problem> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(self.errors))
        }
    }
}

/// A pragmatic check of an email address: one `@`, a local part of 1 to 64
/// characters without spaces, a domain of dotted labels, at most 254
/// characters in all.
pub fn is_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let label = |l: &str| {
        !l.is_empty() && !l.starts_with('-') && !l.ends_with('-') && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    email.chars().count() <= 254
        && (1..=64).contains(&local.chars().count())
        && !local.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@')
        && domain.contains('.')
        && domain.split('.').all(label)
}

impl Request {
    /// The JSON body as a `T`, checked by its rules; otherwise a problem
    /// naming every field at fault (400), or saying the body is not JSON
    /// (415 for another content type, 400 `malformed-json`).
    pub fn json<T: DeserializeOwned + Validate>(&self) -> Result<T, Problem> {
        let object = self.json_object()?;
        decode(Value::Object(object))
    }

    /// The body as a JSON object, untyped.
    pub fn json_object(&self) -> Result<Map<String, Value>, Problem> {
        if let Some(content_type) = self.header("content-type") {
            let essence = content_type.split(';').next().unwrap_or("").trim();
            let is_json =
                essence.eq_ignore_ascii_case("application/json") || essence.to_ascii_lowercase().ends_with("+json");
            if !is_json {
                return Err(Problem::new(
                    415,
                    "unsupported-media-type",
                    "Unsupported media type",
                    format!("expected application/json, got {content_type}"),
                ));
            }
        }
        let value: Value = serde_json::from_slice(self.body())
            .map_err(|e| Problem::bad_request("malformed-json", format!("malformed JSON: {e}")))?;
        match value {
            Value::Object(map) => Ok(map),
            _ => Err(Problem::bad_request("malformed-json", "the body must be a JSON object")),
        }
    }
}

/// Decodes `value` into a `T` and checks it, collecting every error.
pub fn decode<T: DeserializeOwned + Validate>(value: Value) -> Result<T, Problem> {
    let errors = RefCell::new(Vec::new());
    let decoded = T::deserialize(Lenient {
        value: Some(value),
        path: String::new(),
        errors: &errors,
        quiet: false,
    });
    let mut check = Check {
        prefix: String::new(),
        errors: errors.into_inner(),
    };
    match decoded {
        Ok(value) => {
            value.validate(&mut check);
            check.finish().map(|()| value)
        }
        Err(e) => {
            check.that("", check.errors.is_empty(), e.to_string());
            Err(check.finish().expect_err("an error was recorded"))
        }
    }
}

type Error = de::value::Error;

/// Deserializes one JSON value for serde, recording what is wrong with it
/// instead of stopping: a value of the wrong type, or a missing required
/// one, is recorded under its path, and a placeholder of the right type
/// takes its place so that the other fields are checked too. `quiet`
/// builds a placeholder without recording anything.
struct Lenient<'a> {
    /// `None` when the field is missing.
    value: Option<Value>,
    path: String,
    errors: &'a RefCell<Vec<FieldError>>,
    quiet: bool,
}

impl<'a> Lenient<'a> {
    fn record(&self, message: impl Into<String>) {
        if !self.quiet {
            self.errors.borrow_mut().push(FieldError {
                field: self.path.clone(),
                message: message.into(),
            });
        }
    }

    /// Records the value as missing or of the wrong type.
    fn wrong(&self, expected: &str) {
        match &self.value {
            None => self.record("is required"),
            Some(_) => self.record(format!("must be {expected}")),
        }
    }

    fn child(&self, value: Option<Value>, path: String) -> Lenient<'a> {
        Lenient {
            value,
            path,
            errors: self.errors,
            quiet: self.quiet,
        }
    }

    fn field_path(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.path)
        }
    }
}

/// A scalar: the JSON value's own deserializer when the value fits the
/// type asked for, or a placeholder after recording what is wrong.
macro_rules! scalar {
    ($($method:ident => $expected:literal, $fits:expr, $placeholder:expr;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                #[allow(clippy::redundant_closure_call)]
                match self.value.as_ref() {
                    Some(value) if ($fits)(value) => value.clone().$method(visitor).map_err(de::Error::custom),
                    _ => {
                        self.wrong($expected);
                        ($placeholder)(visitor)
                    }
                }
            }
        )*
    };
}

/// Whether a JSON number fits an integer type from `min` to `max`.
fn integer_in(value: &Value, min: i128, max: i128) -> bool {
    let n = value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from));
    n.is_some_and(|n| (min..=max).contains(&n))
}

impl<'de> de::Deserializer<'de> for Lenient<'_> {
    type Error = Error;

    scalar! {
        deserialize_bool => "true or false", Value::is_boolean, |v: V| v.visit_bool(false);
        deserialize_i8 => "an integer from -128 to 127", |v| integer_in(v, -128, 127), |v: V| v.visit_i64(0);
        deserialize_i16 => "an integer from -32768 to 32767", |v| integer_in(v, -32768, 32767), |v: V| v.visit_i64(0);
        deserialize_i32 => "a 32-bit integer", |v| integer_in(v, i32::MIN.into(), i32::MAX.into()), |v: V| v.visit_i64(0);
        deserialize_i64 => "an integer", |v| integer_in(v, i64::MIN.into(), i64::MAX.into()), |v: V| v.visit_i64(0);
        deserialize_u8 => "an integer from 0 to 255", |v| integer_in(v, 0, 255), |v: V| v.visit_u64(0);
        deserialize_u16 => "an integer from 0 to 65535", |v| integer_in(v, 0, 65535), |v: V| v.visit_u64(0);
        deserialize_u32 => "an integer from 0 to 4294967295", |v| integer_in(v, 0, u32::MAX.into()), |v: V| v.visit_u64(0);
        deserialize_u64 => "a non-negative integer", |v| integer_in(v, 0, u64::MAX.into()), |v: V| v.visit_u64(0);
        deserialize_f32 => "a number", Value::is_number, |v: V| v.visit_f64(0.0);
        deserialize_f64 => "a number", Value::is_number, |v: V| v.visit_f64(0.0);
        deserialize_char => "a single character", |v: &Value| v.as_str().is_some_and(|s| s.chars().count() == 1), |v: V| v.visit_char(' ');
        deserialize_str => "a string", Value::is_string, |v: V| v.visit_str("");
        deserialize_string => "a string", Value::is_string, |v: V| v.visit_string(String::new());
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Some(value) => value.deserialize_any(visitor).map_err(de::Error::custom),
            None => {
                self.record("is required");
                visitor.visit_unit()
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.value {
            None | Some(Value::Null) => visitor.visit_none(),
            Some(_) => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items = match &self.value {
            Some(Value::Array(items)) => items.clone(),
            _ => {
                self.wrong("an array");
                Vec::new()
            }
        };
        visitor.visit_seq(Items {
            items: items.into_iter().enumerate(),
            parent: self,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let entries = match &self.value {
            Some(Value::Object(map)) => map.clone().into_iter().collect(),
            _ => {
                self.wrong("an object");
                Vec::new()
            }
        };
        visitor.visit_map(Fields {
            entries: entries.into_iter(),
            pending: None,
            parent: self,
        })
    }

    /// Every declared field is handed to the struct, missing or not, so
    /// each one's own deserializer says whether it may be missing (an
    /// `Option`) or not; keys no field declares are errors.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let mut object = match &self.value {
            Some(Value::Object(map)) => map.clone(),
            _ => {
                // A placeholder object whose missing fields are not errors.
                self.wrong("an object");
                let quiet = Lenient {
                    value: Some(Value::Object(Map::new())),
                    quiet: true,
                    ..self
                };
                return quiet.deserialize_struct(_name, fields, visitor);
            }
        };
        let entries: Vec<(String, Option<Value>)> = fields.iter().map(|f| (f.to_string(), object.remove(*f))).collect();
        let unknown: Vec<String> = object.keys().map(|key| self.field_path(key)).collect();
        let (errors, quiet) = (self.errors, self.quiet);
        let decoded = visitor.visit_map(Declared {
            entries: entries.into_iter(),
            pending: None,
            parent: self,
        });
        // Reported after the declared fields, as the reader scans the body.
        for path in unknown {
            let field = Lenient {
                value: None,
                path,
                errors,
                quiet,
            };
            field.record("is not a known field");
        }
        decoded
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.value {
            Some(Value::String(s)) if variants.contains(&s.as_str()) => {
                visitor.visit_enum(s.clone().into_deserializer())
            }
            Some(value @ Value::Object(_)) => value
                .clone()
                .deserialize_enum(name, variants, visitor)
                .map_err(de::Error::custom),
            _ => {
                self.wrong(&format!("one of {}", variants.join(", ")));
                visitor.visit_enum(variants.first().copied().unwrap_or_default().into_deserializer())
            }
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }
}

/// The items of an array, each at `path[i]`.
struct Items<'a, I> {
    items: I,
    parent: Lenient<'a>,
}

impl<'de, I: Iterator<Item = (usize, Value)>> SeqAccess<'de> for Items<'_, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        let Some((index, value)) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{index}]", self.parent.path);
        seed.deserialize(self.parent.child(Some(value), path)).map(Some)
    }
}

/// The declared fields of a struct, missing ones included.
struct Declared<'a, I> {
    entries: I,
    pending: Option<(String, Option<Value>)>,
    parent: Lenient<'a>,
}

impl<'de, I: Iterator<Item = (String, Option<Value>)>> MapAccess<'de> for Declared<'_, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some((name, value)) = self.entries.next() else {
            return Ok(None);
        };
        let key = seed.deserialize(name.clone().into_deserializer())?;
        self.pending = Some((name, value));
        Ok(Some(key))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        let (name, value) = self.pending.take().expect("a key comes before its value");
        let path = self.parent.field_path(&name);
        seed.deserialize(self.parent.child(value, path))
    }
}

/// The entries of an object read as a map.
struct Fields<'a, I> {
    entries: I,
    pending: Option<(String, Value)>,
    parent: Lenient<'a>,
}

impl<'de, I: Iterator<Item = (String, Value)>> MapAccess<'de> for Fields<'_, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some((name, value)) = self.entries.next() else {
            return Ok(None);
        };
        let key = seed.deserialize(name.clone().into_deserializer())?;
        self.pending = Some((name, value));
        Ok(Some(key))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        let (name, value) = self.pending.take().expect("a key comes before its value");
        let path = self.parent.field_path(&name);
        seed.deserialize(self.parent.child(Some(value), path))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Order {
        user_id: i64,
        note: Option<String>,
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    struct Item {
        sku: String,
        quantity: u32,
    }

    impl Validate for Order {
        fn validate(&self, check: &mut Check) {
            check.that("user_id", self.user_id > 0, "must be positive");
            check.that("items", !self.items.is_empty(), "must not be empty");
            check.each("items", &self.items);
        }
    }

    impl Validate for Item {
        fn validate(&self, check: &mut Check) {
            check.that("sku", !self.sku.is_empty(), "must not be empty");
            check.that("quantity", self.quantity >= 1, "must be at least 1");
        }
    }

    fn fields(value: Value) -> Vec<String> {
        match decode::<Order>(value) {
            Ok(order) => panic!("accepted {order:?}"),
            Err(problem) => problem.extensions["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_string())
                .collect(),
        }
    }

    #[test]
    fn emails() {
        for good in ["ada@example.com", "a.b+c@sub.example.org", "x@b.co", "élise@exemple.fr"] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a b@example.com",
            "ada@exa mple.com",
            "ada@@example.com",
            "ada@-example.com",
            "ada@example..com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn a_good_body_decodes() {
        let order: Order = decode(json!({ "user_id": 1, "items": [{ "sku": "A", "quantity": 2 }] })).unwrap();
        assert_eq!((order.user_id, order.note, order.items[0].quantity), (1, None, 2));
    }

    #[test]
    fn every_field_at_fault_is_reported_in_order() {
        assert_eq!(fields(json!({})), ["user_id", "items"]);
        assert_eq!(
            fields(json!({ "user_id": "1", "items": "x", "extra": 1 })),
            ["user_id", "items", "extra"]
        );
        assert_eq!(
            fields(json!({ "user_id": 1, "note": 5, "items": [{ "sku": 1 }, "x", { "sku": "", "quantity": 1.5 }] })),
            [
                "note",
                "items[0].sku",
                "items[0].quantity",
                "items[1]",
                "items[2].quantity",
                "items[2].sku"
            ]
        );
        // Rules run on what decoded, and skip what is already at fault.
        assert_eq!(
            fields(json!({ "user_id": -1, "items": [{ "sku": "", "quantity": 0 }] })),
            ["user_id", "items[0].sku", "items[0].quantity"]
        );
        assert_eq!(fields(json!({ "user_id": 1, "items": [] })), ["items"]);
        assert_eq!(
            fields(json!({ "user_id": 1, "items": [{ "sku": "A", "quantity": -1 }] })),
            ["items[0].quantity"]
        );
    }
}
