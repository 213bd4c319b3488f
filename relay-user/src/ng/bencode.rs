//! Bencode (BitTorrent BEP 3) as the NG protocol uses it: byte strings,
//! integers, lists and dictionaries.
//!
//! Hand-written rather than taken from a crate, for three reasons:
//! - NG dictionaries arrive in insertion order, not sorted: Kamailio's and
//!   OpenSIPS's modules (and rtpengine itself) write keys as they add them,
//!   and rtpengine's protocol description says the sorted-key rule "is
//!   currently not honored". The maintained crate (`bendy`) rejects unsorted
//!   keys; `serde_bencode` decodes into serde models (losing the key order and
//!   duplicate handling we want to control) and has not had a release in years.
//! - Input comes from the network: decoding must never panic, must bound
//!   nesting depth and sizes, and must report what is wrong where.
//! - It is small: the whole format is four productions.
//!
//! [`Value::Dict`] keeps pairs in arrival order; lookups take the first
//! occurrence of a key. Encoding writes pairs in the order given.

use std::fmt;

/// Deepest nesting of lists and dictionaries accepted. NG messages nest three
/// or four levels (query replies: tags -> medias -> streams -> endpoint).
pub const MAX_DEPTH: usize = 32;

/// Most items (strings, integers, lists, dictionaries) in one message.
pub const MAX_ITEMS: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(Vec<(Vec<u8>, Value)>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("offset {offset}: unexpected end of input")]
    Eof { offset: usize },
    #[error("offset {offset}: unexpected byte {byte:#04x}")]
    Unexpected { offset: usize, byte: u8 },
    #[error("offset {offset}: bad integer")]
    BadInt { offset: usize },
    #[error("offset {offset}: bad string length")]
    BadLength { offset: usize },
    #[error("offset {offset}: dictionary key is not a string")]
    KeyNotString { offset: usize },
    #[error("offset {offset}: nested deeper than {MAX_DEPTH}")]
    TooDeep { offset: usize },
    #[error("more than {MAX_ITEMS} items")]
    TooManyItems,
    #[error("offset {offset}: trailing data after the value")]
    Trailing { offset: usize },
}

/// Decodes exactly one value; trailing ASCII whitespace (a newline from a
/// hand-typed request) is allowed, anything else after it is an error.
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let mut d = Decoder {
        input,
        pos: 0,
        items: 0,
    };
    let value = d.value(0)?;
    if input[d.pos..].iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(DecodeError::Trailing { offset: d.pos });
    }
    Ok(value)
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Eof { offset: self.pos })
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(DecodeError::TooManyItems);
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let n = self.int_until(b'e')?;
                Ok(Value::Int(n))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep { offset: self.pos });
                }
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep { offset: self.pos });
                }
                self.pos += 1;
                let mut pairs = Vec::new();
                loop {
                    let b = self.peek()?;
                    if b == b'e' {
                        break;
                    }
                    if !b.is_ascii_digit() {
                        return Err(DecodeError::KeyNotString { offset: self.pos });
                    }
                    let key = self.bytes()?;
                    let value = self.value(depth + 1)?;
                    pairs.push((key, value));
                }
                self.pos += 1;
                Ok(Value::Dict(pairs))
            }
            byte => Err(DecodeError::Unexpected {
                offset: self.pos,
                byte,
            }),
        }
    }

    /// `i<digits>e` after the `i`: optional minus, no leading zeros, no "-0".
    fn int_until(&mut self, end: u8) -> Result<i64, DecodeError> {
        let start = self.pos;
        let bad = DecodeError::BadInt { offset: start };
        let rest = &self.input[start..];
        let len = rest
            .iter()
            .position(|&b| b == end)
            .ok_or(DecodeError::Eof {
                offset: self.input.len(),
            })?;
        let text = &rest[..len];
        let digits = text.strip_prefix(b"-").unwrap_or(text);
        let canonical = !digits.is_empty()
            && digits.iter().all(u8::is_ascii_digit)
            && (digits == b"0" || digits[0] != b'0')
            && text != b"-0";
        if !canonical {
            return Err(bad);
        }
        // ASCII digits only, so from_utf8 cannot fail; parse checks overflow.
        let n = std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or(bad)?;
        self.pos = start + len + 1;
        Ok(n)
    }

    /// `<length>:<bytes>`.
    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let start = self.pos;
        let bad = DecodeError::BadLength { offset: start };
        let rest = &self.input[start..];
        let colon = rest
            .iter()
            .take(21)
            .position(|&b| b == b':')
            .ok_or(if rest.len() < 21 {
                DecodeError::Eof {
                    offset: self.input.len(),
                }
            } else {
                bad.clone()
            })?;
        let digits = &rest[..colon];
        if digits.is_empty()
            || !digits.iter().all(u8::is_ascii_digit)
            || (digits.len() > 1 && digits[0] == b'0')
        {
            return Err(bad);
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(bad)?;
        let data_start = start + colon + 1;
        let data_end = data_start
            .checked_add(len)
            .filter(|&e| e <= self.input.len())
            .ok_or(DecodeError::Eof {
                offset: self.input.len(),
            })?;
        self.pos = data_end;
        Ok(self.input[data_start..data_end].to_vec())
    }
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Int(n) => {
            out.push(b'i');
            decimal(out, n.unsigned_abs(), *n < 0);
            out.push(b'e');
        }
        Value::Bytes(b) => bytes_into(b, out),
        Value::List(items) => {
            out.push(b'l');
            for item in items {
                encode_into(item, out);
            }
            out.push(b'e');
        }
        Value::Dict(pairs) => {
            out.push(b'd');
            for (k, v) in pairs {
                bytes_into(k, out);
                encode_into(v, out);
            }
            out.push(b'e');
        }
    }
}

fn bytes_into(b: &[u8], out: &mut Vec<u8>) {
    decimal(out, b.len() as u64, false);
    out.push(b':');
    out.extend_from_slice(b);
}

/// Writes a number in decimal without allocating (replies are mostly
/// numbers and short strings).
fn decimal(out: &mut Vec<u8>, mut n: u64, negative: bool) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

/// Encoded size, to allocate once.
fn encoded_len(value: &Value) -> usize {
    match value {
        Value::Int(_) => 22,
        Value::Bytes(b) => b.len() + 21,
        Value::List(items) => 2 + items.iter().map(encoded_len).sum::<usize>(),
        Value::Dict(pairs) => {
            2 + pairs
                .iter()
                .map(|(k, v)| k.len() + 21 + encoded_len(v))
                .sum::<usize>()
        }
    }
}

pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(value));
    encode_into(value, &mut out);
    out
}

impl Value {
    pub fn str(s: impl AsRef<str>) -> Value {
        Value::Bytes(s.as_ref().as_bytes().to_vec())
    }

    pub fn int(n: impl TryInto<i64>) -> Value {
        Value::Int(n.try_into().unwrap_or(i64::MAX))
    }

    pub fn list_of_str<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> Value {
        Value::List(items.into_iter().map(Value::str).collect())
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The value as UTF-8 text, if it is a string that is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&[(Vec<u8>, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// First value under `key` in a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// Converts to JSON for logs and the JSON flavour of the protocol: byte
    /// strings become strings (lossy for invalid UTF-8).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int(n) => serde_json::Value::from(*n),
            Value::Bytes(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
            Value::List(l) => serde_json::Value::Array(l.iter().map(Value::to_json).collect()),
            Value::Dict(d) => serde_json::Value::Object(
                d.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The bencode view of a JSON document: strings to byte strings, integral
    /// numbers to integers, booleans to 0/1; other numbers and nulls have no
    /// bencode form and become their text.
    pub fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::str(""),
            serde_json::Value::Bool(b) => Value::Int(i64::from(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::str(n.to_string()),
            },
            serde_json::Value::String(s) => Value::str(s),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Dict(
                o.iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// A dictionary under construction (replies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dict(Vec<(Vec<u8>, Value)>);

impl Dict {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`, replacing an earlier value under the same key.
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.0.iter_mut().find(|(k, _)| k == key.as_bytes()) {
            Some((_, v)) => *v = value,
            None => self.0.push((key.as_bytes().to_vec(), value)),
        }
        self
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.set(key, value);
        self
    }

    pub fn into_value(self) -> Value {
        Value::Dict(self.0)
    }
}

impl From<Dict> for Value {
    fn from(d: Dict) -> Value {
        d.into_value()
    }
}

/// Compact, human-readable rendering for logs: `{command: "ping"}`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Bytes(b) => {
                let s = String::from_utf8_lossy(b);
                if s.len() > 80 {
                    let cut = (0..=80).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                    write!(f, "{:?}...({} bytes)", &s[..cut], b.len())
                } else {
                    write!(f, "{s:?}")
                }
            }
            Value::List(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Dict(d) => {
                f.write_str("{")?;
                for (i, (k, v)) in d.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}: {v}", String::from_utf8_lossy(k))?;
                }
                f.write_str("}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    #[test]
    fn round_trips() {
        let v = Value::Dict(vec![
            (b"command".to_vec(), Value::str("offer")),
            (b"sdp".to_vec(), Value::str("v=0\r\n")),
            (
                b"flags".to_vec(),
                Value::List(vec![Value::str("trust-address"), Value::Int(-42)]),
            ),
            (b"empty".to_vec(), Value::Dict(vec![])),
            (b"zero".to_vec(), Value::Int(0)),
        ]);
        let bytes = encode(&v);
        assert_eq!(
            bytes,
            b"d7:command5:offer3:sdp5:v=0\r\n5:flagsl13:trust-addressi-42ee5:emptyde4:zeroi0ee"
        );
        assert_eq!(decode(&bytes).unwrap(), v);
    }

    #[test]
    fn integers_encode_in_decimal() {
        for n in [0, 7, -7, 10, 1234567890, i64::MAX, i64::MIN] {
            assert_eq!(encode(&Value::Int(n)), format!("i{n}e").into_bytes());
            assert_eq!(decode(&encode(&Value::Int(n))).unwrap(), Value::Int(n));
        }
    }

    #[test]
    fn unsorted_and_duplicate_keys_are_kept_in_order() {
        let v = decode(b"d1:bi1e1:ai2e1:bi3ee").unwrap();
        assert_eq!(v.get("b"), Some(&Value::Int(1)), "first occurrence wins");
        assert_eq!(v.get("a"), Some(&Value::Int(2)));
        assert_eq!(v.as_dict().unwrap().len(), 3);
    }

    #[test]
    fn rejects_malformed_input() {
        for (input, what) in [
            (&b""[..], "empty"),
            (b"i12", "unterminated int"),
            (b"ie", "empty int"),
            (b"i-0e", "negative zero"),
            (b"i012e", "leading zero"),
            (b"i1x2e", "junk in int"),
            (b"i99999999999999999999e", "overflow"),
            (b"5:abc", "short string"),
            (b"05:abcde", "leading zero length"),
            (b"99999999999999999999999:a", "huge length"),
            (b"18446744073709551615:a", "length overflowing usize add"),
            (b"l", "unterminated list"),
            (b"d3:abc", "dict without value"),
            (b"di1ei2ee", "int key"),
            (b"x", "unknown type"),
            (b"i1ei2e", "trailing value"),
            (b"-1:a", "negative length"),
        ] {
            assert!(decode(input).is_err(), "{what}: {input:?} decoded");
        }
        assert_eq!(
            decode(b"i7e\r\n").unwrap(),
            Value::Int(7),
            "trailing newline"
        );
    }

    #[test]
    fn depth_and_item_limits() {
        let deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert!(matches!(decode(&deep), Err(DecodeError::TooDeep { .. })));
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok).is_ok());
        let mut many = b"l".to_vec();
        for _ in 0..MAX_ITEMS {
            many.extend_from_slice(b"i1e");
        }
        many.push(b'e');
        assert_eq!(decode(&many), Err(DecodeError::TooManyItems));
    }

    #[test]
    fn json_bridge() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"command":"ping","n":3,"l":["a",true]}"#).unwrap();
        let v = Value::from_json(&json);
        assert_eq!(v.get("command").and_then(Value::as_str), Some("ping"));
        assert_eq!(v.get("n"), Some(&Value::Int(3)));
        assert_eq!(
            v.to_json(),
            serde_json::json!({"command":"ping","n":3,"l":["a",1]})
        );
    }

    #[test]
    fn fuzz_random_bytes_never_panic() {
        let mut rng = Rng(0xbe4c_0de1);
        let alphabet = b"ilde0123456789:-xa ";
        for _ in 0..50_000 {
            let len = rng.below(64);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(4) == 0 {
                        rng.next() as u8
                    } else {
                        alphabet[rng.below(alphabet.len())]
                    }
                })
                .collect();
            if let Ok(v) = decode(&bytes) {
                // Whatever decodes re-encodes to something that decodes the same.
                assert_eq!(decode(&encode(&v)).unwrap(), v, "{bytes:?}");
            }
        }
    }

    #[test]
    fn fuzz_mutated_messages_never_panic() {
        let mut rng = Rng(0xbe4c_0de2);
        let seeds: Vec<Vec<u8>> = super::super::tests::CAPTURED_REQUESTS
            .iter()
            .map(|r| r.split_once(' ').unwrap().1.as_bytes().to_vec())
            .collect();
        for seed in &seeds {
            assert!(decode(seed).is_ok(), "seed must decode");
            for _ in 0..3_000 {
                let mut m = seed.clone();
                for _ in 0..=rng.below(4) {
                    if m.is_empty() {
                        break;
                    }
                    let i = rng.below(m.len());
                    match rng.below(4) {
                        0 => m[i] = rng.next() as u8,
                        1 => {
                            m.remove(i);
                        }
                        2 => m.insert(i, b"ilde:0123456789"[rng.below(15)]),
                        _ => m.truncate(i),
                    }
                }
                if let Ok(v) = decode(&m) {
                    assert_eq!(decode(&encode(&v)).unwrap(), v);
                }
            }
        }
    }
}
