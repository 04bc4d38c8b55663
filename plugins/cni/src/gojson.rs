//! JSON decoded as the reference plugins' Go `encoding/json` decodes it into their structs, so
//! that a config the reference accepts means the same here:
//!
//! - An object key names a struct field when it equals the field's name, else when it equals it
//!   ignoring case (Go's folding: ASCII case, and `ſ`/`K` (Kelvin) as `s`/`k`). This holds at
//!   every struct level: `"MTU"`, `"IsGateway"`, `"ipam": {"Subnet": …}`. Keys of maps (and of
//!   free-form values) are taken as they are.
//! - Keys are applied in document order onto the same field: a later scalar or array element
//!   overwrites an earlier one, a later object is merged into the struct the earlier one filled
//!   (`{"ipam":{"subnet":…},"IPAM":{"rangeStart":…}}` has both), arrays are merged element by
//!   element and take the length of the last one; a `null` resets an optional value.
//!
//! - An integer is decoded into its field's type only when the type holds it: anything else is
//!   [`DecodeError::OutOfRange`], with the number as written (never wrapped, never rounded;
//!   the reference's Go decoder is no model here, its plugins narrow an `int` later). A
//!   literal beyond 64 bits, which serde_json can only read as a float, is kept as written
//!   ([`Node::BigInt`]) for that.
//!
//! The mechanism is one [`serde::Deserializer`] over the parsed document ([`Node`], which keeps
//! the order and repetitions of keys): `deserialize_struct` learns the struct's field names
//! from serde and groups the object's keys onto them (one comparison with each field name and
//! one map lookup per key: linear in the keys), so every `#[derive(Deserialize)]` type
//! decoded through [`from_node`] follows these rules without per-field code. (Types using
//! `#[serde(flatten)]` are decoded as maps by serde and would not fold: none of the config
//! types use it.)

use std::collections::hash_map::{Entry, HashMap};

use serde::de::value::StringDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};

/// A parsed JSON document that keeps every key of an object, in order, repeated ones too.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(Number),
    /// An integer literal that serde_json reads as a float (beyond 64 bits, or `-0`), as
    /// written: an integer field is given its exact value or refused with this text.
    BigInt(String),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    /// Parses one JSON document (nothing but whitespace may follow it).
    pub fn parse(b: &[u8]) -> serde_json::Result<Node> {
        let mut de = serde_json::Deserializer::from_slice(b);
        let mut n = Node::deserialize(&mut de)?;
        de.end()?;
        if n.has_float() {
            n.keep_integer_literals(&mut NumberLiterals { b, at: 0 });
        }
        Ok(n)
    }

    fn has_float(&self) -> bool {
        match self {
            Node::Number(n) => n.is_f64(),
            Node::Array(a) => a.iter().any(Node::has_float),
            Node::Object(o) => o.iter().any(|(_, v)| v.has_float()),
            _ => false,
        }
    }

    /// Replaces each float that was written as an integer by [`Node::BigInt`]: the numbers
    /// of the tree, in document order, are the number literals of the document, in order.
    fn keep_integer_literals(&mut self, lits: &mut NumberLiterals) {
        match self {
            Node::Number(n) => {
                let lit = lits.next().unwrap_or_default();
                if n.is_f64() && !lit.is_empty() && lit.bytes().all(|c| c == b'-' || c.is_ascii_digit()) {
                    *self = Node::BigInt(lit.to_string());
                }
            }
            Node::Array(a) => a.iter_mut().for_each(|n| n.keep_integer_literals(lits)),
            Node::Object(o) => o.iter_mut().for_each(|(_, v)| v.keep_integer_literals(lits)),
            _ => {}
        }
    }

    /// The value as a `serde_json::Value` (a repeated key of an object: the last one).
    pub fn into_value(self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Number(n) => Value::Number(n),
            Node::BigInt(s) => s
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map_or(Value::Null, Value::Number),
            Node::String(s) => Value::String(s),
            Node::Array(a) => Value::Array(a.into_iter().map(Node::into_value).collect()),
            Node::Object(o) => {
                let mut m = Map::new();
                for (k, v) in o {
                    m.insert(k, v.into_value());
                }
                Value::Object(m)
            }
        }
    }
}

/// The number literals of a valid JSON document, in order (what is outside strings and
/// starts with `-` or a digit).
struct NumberLiterals<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Iterator for NumberLiterals<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let b = self.b;
        while self.at < b.len() {
            match b[self.at] {
                b'"' => {
                    self.at += 1;
                    while self.at < b.len() && b[self.at] != b'"' {
                        self.at += if b[self.at] == b'\\' { 2 } else { 1 };
                    }
                    self.at += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = self.at;
                    while self.at < b.len() && matches!(b[self.at], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                        self.at += 1;
                    }
                    return std::str::from_utf8(&b[start..self.at]).ok();
                }
                _ => self.at += 1,
            }
        }
        None
    }
}

impl From<&Value> for Node {
    fn from(v: &Value) -> Node {
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.clone()),
            Value::String(s) => Node::String(s.clone()),
            Value::Array(a) => Node::Array(a.iter().map(Node::from).collect()),
            Value::Object(o) => Node::Object(o.iter().map(|(k, v)| (k.clone(), Node::from(v))).collect()),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
                Ok(Node::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
                Ok(Node::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
                Ok(Node::Number(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Node, E> {
                Ok(Number::from_f64(n).map_or(Node::Null, Node::Number))
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(Node::String(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Node, E> {
                Ok(Node::String(s))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(n) = a.next_element()? {
                    v.push(n);
                }
                Ok(Node::Array(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = a.next_entry::<String, Node>()? {
                    v.push(kv);
                }
                Ok(Node::Object(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Go's case folding of a key character for field matching.
fn fold(c: char) -> char {
    match c {
        '\u{17F}' => 's',  // LATIN SMALL LETTER LONG S
        '\u{212A}' => 'k', // KELVIN SIGN
        c => c.to_ascii_lowercase(),
    }
}

/// Whether object key `key` names the field `name` when no field is named exactly `key`.
pub fn key_matches(key: &str, name: &str) -> bool {
    key.chars().map(fold).eq(name.chars().map(fold))
}

/// The field of `fields` that key `key` names, as Go picks it: the exact name, else the first
/// that equals it ignoring case.
pub fn field_for<'a>(key: &str, fields: &[&'a str]) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| {
            compared(1);
            **f == key
        })
        .or_else(|| {
            fields.iter().find(|f| {
                compared(1);
                key_matches(key, f)
            })
        })
        .copied()
}

#[cfg(test)]
thread_local! {
    /// Key comparisons made on this thread (tests check that decoding is linear in the keys).
    static COMPARISONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts `n` comparisons of a key with a field's or another key's name (only under test).
#[inline(always)]
fn compared(n: u64) {
    #[cfg(test)]
    COMPARISONS.with(|c| c.set(c.get() + n));
    let _ = n;
}

/// Decodes `T` from `node` with Go's rules; errors name the path of the offending field.
pub fn from_node<T: serde::de::DeserializeOwned>(node: Node) -> Result<T, serde_path_to_error::Error<DecodeError>> {
    serde_path_to_error::deserialize(Folded(vec![node]))
}

/// Why a value does not decode into its destination.
#[derive(Debug)]
pub enum DecodeError {
    /// A wrong type, a missing field ...: serde_json's words.
    Json(serde_json::Error),
    /// An integer that the field's type cannot hold: the number as written in the input, and
    /// the type's bounds.
    OutOfRange { value: String, min: i128, max: i128 },
}

type Error = DecodeError;

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Json(e) => e.fmt(f),
            DecodeError::OutOfRange { value, min, max } => {
                write!(f, "{value} is out of range: must be an integer between {min} and {max}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// The messages are serde_json's own.
impl de::Error for DecodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DecodeError::Json(serde_json::Error::custom(msg))
    }
    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DecodeError::Json(serde_json::Error::invalid_type(unexp, exp))
    }
    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DecodeError::Json(serde_json::Error::invalid_value(unexp, exp))
    }
    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        DecodeError::Json(serde_json::Error::invalid_length(len, exp))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DecodeError::Json(serde_json::Error::unknown_variant(variant, expected))
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DecodeError::Json(serde_json::Error::unknown_field(field, expected))
    }
    fn missing_field(field: &'static str) -> Self {
        DecodeError::Json(serde_json::Error::missing_field(field))
    }
    fn duplicate_field(field: &'static str) -> Self {
        DecodeError::Json(serde_json::Error::duplicate_field(field))
    }
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        DecodeError::Json(e)
    }
}

/// The values a JSON document gives to one destination, in document order (one, or more when
/// keys that name the same field repeat). Never empty.
struct Folded(Vec<Node>);

impl Folded {
    /// The last value, for destinations where a later value replaces an earlier one.
    fn last(mut self) -> Node {
        self.0.pop().unwrap_or(Node::Null)
    }

    /// The last value that is not `null` (a `null` leaves a scalar as it was).
    fn last_set(self) -> Node {
        self.0.into_iter().rfind(|n| *n != Node::Null).unwrap_or(Node::Null)
    }

    /// The values after the last `null` (a `null` resets a pointer, slice or map).
    fn after_null(self) -> Vec<Node> {
        let mut v = self.0;
        if let Some(i) = v.iter().rposition(|n| *n == Node::Null) {
            v.drain(..=i);
        }
        v
    }
}

/// The entries of objects `nodes`, or the type error of the first value that is not one.
fn objects(nodes: Vec<Node>, visitor_err: impl Fn(Value) -> Error) -> Result<Vec<(String, Node)>, Error> {
    let mut out = Vec::new();
    for n in nodes {
        match n {
            Node::Object(o) => out.extend(o),
            Node::Null => {}
            other => return Err(visitor_err(other.into_value())),
        }
    }
    Ok(out)
}

fn invalid_type(v: &Value, exp: &dyn de::Expected) -> Error {
    <Error as de::Error>::invalid_type(unexpected(v), exp)
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => de::Unexpected::Unsigned(u),
            (_, Some(i), _) => de::Unexpected::Signed(i),
            (_, _, Some(f)) => de::Unexpected::Float(f),
            _ => de::Unexpected::Other("number"),
        },
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

/// An object's entries as a map for a visitor: keys as they are, each value its own.
struct Entries {
    it: std::vec::IntoIter<(String, Folded)>,
    value: Option<Folded>,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.it.next() {
            None => Ok(None),
            Some((k, v)) => {
                self.value = Some(v);
                let kd: StringDeserializer<Error> = k.into_deserializer();
                seed.deserialize(kd).map(Some)
            }
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let v = self
            .value
            .take()
            .ok_or_else(|| <Error as de::Error>::custom("value requested before key"))?;
        seed.deserialize(v)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.it.len())
    }
}

struct Elements(std::vec::IntoIter<Folded>);

impl<'de> SeqAccess<'de> for Elements {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.0.next() {
            None => Ok(None),
            Some(v) => seed.deserialize(v).map(Some),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

fn entries(list: Vec<(String, Folded)>) -> Entries {
    Entries {
        it: list.into_iter(),
        value: None,
    }
}

macro_rules! scalar {
    ($($m:ident)*) => {$(
        fn $m<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            Ok(self.last_set().into_value().$m(visitor)?)
        }
    )*};
}

/// Integer destinations: the value if the type holds it, else [`DecodeError::OutOfRange`];
/// what is no integer (a float, a string ...) gets serde_json's type error.
macro_rules! integer {
    ($($m:ident $t:ty)*) => {$(
        fn $m<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let node = self.last_set();
            let (min, max) = (<$t>::MIN as i128, <$t>::MAX as i128);
            match integer(&node) {
                None => Ok(node.into_value().$m(visitor)?),
                Some((Some(v), _)) if (min..=max).contains(&v) => match u64::try_from(v) {
                    Ok(u) => visitor.visit_u64(u),
                    // In the bounds of a signed type of at most 64 bits.
                    Err(_) => visitor.visit_i64(v as i64),
                },
                Some((_, value)) => Err(DecodeError::OutOfRange { value, min, max }),
            }
        }
    )*};
}

/// An integer's value (`None`: beyond 128 bits) and its text as written; `None` for a node
/// that is not an integer.
fn integer(n: &Node) -> Option<(Option<i128>, String)> {
    match n {
        Node::Number(n) => {
            let v = n.as_u64().map(i128::from).or_else(|| n.as_i64().map(i128::from))?;
            Some((Some(v), n.to_string()))
        }
        Node::BigInt(s) => Some((s.parse().ok(), s.clone())),
        _ => None,
    }
}

impl<'de> Deserializer<'de> for Folded {
    type Error = Error;

    /// A free-form value (`serde_json::Value`, Go's `interface{}`): the last one, as it is.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.last() {
            Node::Object(o) => visitor.visit_map(entries(o.into_iter().map(|(k, v)| (k, Folded(vec![v]))).collect())),
            Node::Array(a) => visitor.visit_seq(Elements(
                a.into_iter().map(|v| Folded(vec![v])).collect::<Vec<_>>().into_iter(),
            )),
            other => Ok(other.into_value().deserialize_any(visitor)?),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let rest = self.after_null();
        if rest.is_empty() {
            visitor.visit_none()
        } else {
            visitor.visit_some(Folded(rest))
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let all = objects(self.0, |v| invalid_type(&v, &visitor))?;
        // Group the keys onto the fields they name, in the order fields first appear. Each key
        // is compared with the field names (a constant of the type) and then looked up once
        // among the names before it: the work is linear in the number of keys.
        let mut groups: Vec<Vec<Node>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::with_capacity(all.len().min(1024));
        for (k, v) in all {
            let name = field_for(&k, fields).map_or(k, str::to_string);
            compared(1);
            match index.entry(name) {
                Entry::Occupied(e) => groups[*e.get()].push(v),
                Entry::Vacant(e) => {
                    e.insert(groups.len());
                    groups.push(vec![v]);
                }
            }
        }
        let mut names = vec![String::new(); groups.len()];
        for (name, i) in index {
            names[i] = name;
        }
        // A field given only `null` keeps its zero value in Go: absent here.
        let list = names
            .into_iter()
            .zip(groups)
            .filter(|(_, vs)| vs.iter().any(|n| *n != Node::Null))
            .map(|(k, vs)| (k, Folded(vs)))
            .collect();
        visitor.visit_map(entries(list))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let nodes = self.after_null();
        if nodes.is_empty() {
            return Ok(Value::Null.deserialize_map(visitor)?);
        }
        let all = objects(nodes, |v| invalid_type(&v, &visitor))?;
        visitor.visit_map(entries(all.into_iter().map(|(k, v)| (k, Folded(vec![v]))).collect()))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let nodes = self.after_null();
        let mut arrays = Vec::with_capacity(nodes.len());
        for n in nodes {
            match n {
                Node::Array(a) => arrays.push(a),
                other => return Err(invalid_type(&other.into_value(), &visitor)),
            }
        }
        let Some(len) = arrays.last().map(Vec::len) else {
            return Ok(Value::Null.deserialize_seq(visitor)?);
        };
        // Element i of the result is decoded from element i of every array, in order.
        let mut cols: Vec<Vec<Node>> = (0..len).map(|_| Vec::new()).collect();
        for a in arrays {
            for (i, n) in a.into_iter().enumerate().take(len) {
                cols[i].push(n);
            }
        }
        visitor.visit_seq(Elements(cols.into_iter().map(Folded).collect::<Vec<_>>().into_iter()))
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

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        Ok(self.last_set().into_value().deserialize_enum(name, variants, visitor)?)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, Error> {
        Ok(self.last_set().into_value().deserialize_unit_struct(name, visitor)?)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    integer! {
        deserialize_i8 i8 deserialize_i16 i16 deserialize_i32 i32 deserialize_i64 i64
        deserialize_u8 u8 deserialize_u16 u16 deserialize_u32 u32 deserialize_u64 u64
    }

    scalar! {
        deserialize_bool deserialize_i128 deserialize_u128 deserialize_f32 deserialize_f64
        deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_identifier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct R {
        #[serde(default)]
        subnet: Option<String>,
        #[serde(rename = "rangeStart", default)]
        range_start: Option<String>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct I {
        #[serde(default)]
        subnet: Option<String>,
        #[serde(rename = "rangeStart", default)]
        range_start: Option<String>,
        #[serde(rename = "type", default)]
        ty: String,
        #[serde(default)]
        ranges: Option<Vec<Vec<R>>>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct N {
        #[serde(default)]
        mtu: i64,
        #[serde(default)]
        ipam: Option<I>,
        #[serde(default)]
        m: Option<std::collections::BTreeMap<String, i64>>,
        #[serde(rename = "prevResult", default)]
        any: Option<Value>,
    }

    fn n(s: &str) -> N {
        from_node(Node::parse(s.as_bytes()).unwrap()).unwrap()
    }

    fn r(subnet: Option<&str>, start: Option<&str>) -> R {
        R {
            subnet: subnet.map(Into::into),
            range_start: start.map(Into::into),
        }
    }

    /// Each case was run through Go 1.19's encoding/json with the same struct shapes.
    #[test]
    fn matches_go_encoding_json() {
        assert_eq!(n(r#"{"mtu":1,"MTU":2}"#).mtu, 2);
        assert_eq!(n(r#"{"MTU":2,"mtu":1}"#).mtu, 1);
        assert_eq!(n(r#"{"mtu":1,"MTU":2,"mtu":3}"#).mtu, 3);
        assert_eq!(n(r#"{"Mtu":7,"MTU":null}"#).mtu, 7);
        let i = n(r#"{"ipam":{"subnet":"a"},"IPAM":{"rangeStart":"b"}}"#).ipam.unwrap();
        assert_eq!((i.subnet.as_deref(), i.range_start.as_deref()), (Some("a"), Some("b")));
        let i = n(r#"{"ipam":{"subnet":"a"},"IPAM":null,"Ipam":{"type":"t"}}"#)
            .ipam
            .unwrap();
        assert_eq!((i.subnet, i.ty.as_str()), (None, "t"));
        let i = n(r#"{"ipam":{"ranges":[[{"subnet":"x"}]]},"IPAM":{"Ranges":[[{"rangeStart":"y"}]]}}"#)
            .ipam
            .unwrap();
        assert_eq!(i.ranges.unwrap(), vec![vec![r(Some("x"), Some("y"))]]);
        let i = n(r#"{"ipam":{"Subnet":"s","SUBNET":"t","rangestart":"r","ſubnet":"u"}}"#)
            .ipam
            .unwrap();
        assert_eq!((i.subnet.as_deref(), i.range_start.as_deref()), (Some("u"), Some("r")));
        // Map keys are not folded; repeated maps are merged.
        let m = n(r#"{"m":{"a":1},"M":{"b":2,"A":3}}"#).m.unwrap();
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            [("A".into(), 3), ("a".into(), 1), ("b".into(), 2)]
        );
        // Free-form values are kept as they are.
        let any = n(r#"{"PREVRESULT":{"Ips":[1]}}"#).any.unwrap();
        assert_eq!(any, serde_json::json!({"Ips":[1]}));
    }

    /// Decoding is linear in the number of keys: every key is compared with the struct's
    /// field names and looked up once among the keys before it, never compared with each
    /// of them (36,000 keys in one object took seconds).
    #[test]
    fn work_is_linear_in_the_keys() {
        let comparisons = |n: usize| {
            let mut s = String::from(r#"{"mtu":1,"IPAM":{"subnet":"a"}"#);
            for i in 0..n {
                s.push_str(&format!(r#","x-{i}":{i},"MTU":{i}"#));
            }
            s.push_str(r#","Ipam":{"rangeStart":"b"}}"#);
            let node = Node::parse(s.as_bytes()).unwrap();
            COMPARISONS.with(|c| c.set(0));
            let v: N = from_node(node).unwrap();
            assert_eq!(v.mtu, n as i64 - 1);
            let i = v.ipam.unwrap();
            assert_eq!((i.subnet.as_deref(), i.range_start.as_deref()), (Some("a"), Some("b")));
            COMPARISONS.with(|c| c.get())
        };
        // N has 4 fields: at most 2 comparisons per field and one lookup per key.
        for n in [1000, 4000] {
            let keys = 2 * n as u64 + 3;
            let c = comparisons(n);
            assert!(c <= keys * 9, "{n}: {c} comparisons for {keys} keys");
        }
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Ints {
        i8: Option<i8>,
        i16: Option<i16>,
        i32: Option<i32>,
        i64: Option<i64>,
        u8: Option<u8>,
        u16: Option<u16>,
        u32: Option<u32>,
        u64: Option<u64>,
        usize: Option<usize>,
        f64: Option<f64>,
        any: Option<Value>,
    }

    fn ints(s: &str) -> Result<Ints, (String, DecodeError)> {
        from_node(Node::parse(s.as_bytes()).unwrap()).map_err(|e| (e.path().to_string(), e.into_inner()))
    }

    /// An integer is taken only when its field's type holds it: never wrapped, never rounded;
    /// the refusal names the number as written.
    #[test]
    fn integers_are_range_checked_against_their_type() {
        let bounds: [(&str, i128, i128); 9] = [
            ("i8", i8::MIN.into(), i8::MAX.into()),
            ("i16", i16::MIN.into(), i16::MAX.into()),
            ("i32", i32::MIN.into(), i32::MAX.into()),
            ("i64", i64::MIN.into(), i64::MAX.into()),
            ("u8", 0, u8::MAX.into()),
            ("u16", 0, u16::MAX.into()),
            ("u32", 0, u32::MAX.into()),
            ("u64", 0, u64::MAX.into()),
            ("usize", 0, u64::MAX.into()),
        ];
        for (field, min, max) in bounds {
            for ok in [min, max, 0, 1] {
                let v = ints(&format!(r#"{{"{field}":{ok}}}"#)).unwrap_or_else(|e| panic!("{field} {ok}: {e:?}"));
                let got: i128 = match field {
                    "i8" => v.i8.unwrap().into(),
                    "i16" => v.i16.unwrap().into(),
                    "i32" => v.i32.unwrap().into(),
                    "i64" => v.i64.unwrap().into(),
                    "u8" => v.u8.unwrap().into(),
                    "u16" => v.u16.unwrap().into(),
                    "u32" => v.u32.unwrap().into(),
                    "u64" => v.u64.unwrap().into(),
                    _ => v.usize.unwrap() as i128,
                };
                assert_eq!(got, ok, "{field}");
            }
            let beyond = [
                (min - 1).to_string(),
                (max + 1).to_string(),
                (max + (1 << 32) + 1500).to_string(),
                "99999999999".to_string(),
                "-99999999999".to_string(),
                "18446744073709551616".to_string(),
                "-9223372036854775809".to_string(),
                "340282366920938463463374607431768211456".to_string(),
                "-1".to_string() + &"0".repeat(60),
            ];
            for lit in beyond {
                let fits = lit.parse::<i128>().is_ok_and(|v| (min..=max).contains(&v));
                if fits {
                    continue;
                }
                match ints(&format!(r#"{{"{}":{lit}}}"#, field.to_uppercase())) {
                    Err((
                        path,
                        DecodeError::OutOfRange {
                            value,
                            min: lo,
                            max: hi,
                        },
                    )) => {
                        assert_eq!((path.as_str(), value.as_str(), lo, hi), (field, lit.as_str(), min, max));
                    }
                    other => panic!("{field} {lit}: {other:?}"),
                }
            }
        }
        let (_, e) = ints(r#"{"u32":4294968796}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "4294968796 is out of range: must be an integer between 0 and 4294967295"
        );
        // -0 is the integer 0 (serde_json reads it as a float).
        assert_eq!(ints(r#"{"u8":-0,"i64":-0}"#).unwrap().u8, Some(0));
        // What is no integer stays a type error, in serde_json's words.
        for (bad, why) in [
            ("1.5", "floating point `1.5`"),
            ("1e3", "floating point `1000.0`"),
            (r#""7""#, "string"),
        ] {
            match ints(&format!(r#"{{"u32":{bad}}}"#)) {
                Err((path, DecodeError::Json(e))) => {
                    assert_eq!(path, "u32");
                    assert!(e.to_string().starts_with(&format!("invalid type: {why}")), "{bad}: {e}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // Floats and free-form values take big integers as before: as floats.
        let v = ints(r#"{"f64":100000000000000000000,"any":[18446744073709551616,1]}"#).unwrap();
        assert_eq!(v.f64, Some(1e20));
        assert_eq!(v.any.unwrap(), serde_json::json!([18446744073709551616.0, 1]));
    }

    #[test]
    fn integer_literals_beyond_64_bits_are_kept_as_written() {
        let n = Node::parse(br#"{"a":"x\"1 2","b":[1.5,18446744073709551616,"-3",-0,-1e2,7,-99999999999999999999]}"#)
            .unwrap();
        let Node::Object(o) = n else { panic!() };
        let Node::Array(b) = &o[1].1 else { panic!() };
        assert_eq!(
            b[..],
            [
                Node::Number(Number::from_f64(1.5).unwrap()),
                Node::BigInt("18446744073709551616".into()),
                Node::String("-3".into()),
                Node::BigInt("-0".into()),
                Node::Number(Number::from_f64(-100.0).unwrap()),
                Node::Number(7.into()),
                Node::BigInt("-99999999999999999999".into()),
            ]
        );
    }

    #[test]
    fn mis_cased_keys_are_checked_as_strictly() {
        let e = from_node::<N>(Node::parse(br#"{"MTU":"big"}"#).unwrap()).unwrap_err();
        assert_eq!(e.path().to_string(), "mtu");
        let e = from_node::<N>(Node::parse(br#"{"Ipam":"x"}"#).unwrap()).unwrap_err();
        assert_eq!(e.path().to_string(), "ipam");
        assert!(Node::parse(b"{} x").is_err());
    }
}
