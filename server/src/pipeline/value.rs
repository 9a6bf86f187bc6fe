//! Values that flow through a run, the column types a flow can cast to, and the conversions
//! between them (parsing text, binding to expressions, writing to COPY and JSON). A cast that
//! fails says why in a `CastError` (a bad row's reason).

use std::fmt::Write as _;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::pipeline::error::CastError;

/// One field of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// Text as read from a file that does not say what it is (a CSV field): a number in an
    /// expression when it reads as one, text otherwise; a cast gives it a type.
    Raw(String),
    Text(String),
    Bool(bool),
    Int(i64),
    Float(f64),
    Decimal(Decimal),
    Timestamp(DateTime<Utc>),
    Date(NaiveDate),
}

/// The types a column can be cast to, with their Postgres column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Int,
    Float,
    Decimal,
    Text,
    Bool,
    Timestamp,
    Date,
}

impl Type {
    pub const NAMES: &'static [&'static str] = &[
        "int",
        "float",
        "decimal",
        "text",
        "bool",
        "timestamp",
        "date",
    ];

    pub fn parse(name: &str) -> Option<Type> {
        Some(match name {
            "int" => Type::Int,
            "float" => Type::Float,
            "decimal" => Type::Decimal,
            "text" => Type::Text,
            "bool" => Type::Bool,
            "timestamp" => Type::Timestamp,
            "date" => Type::Date,
            _ => return None,
        })
    }

    pub fn sql(self) -> &'static str {
        match self {
            Type::Int => "bigint",
            Type::Float => "double precision",
            Type::Decimal => "numeric",
            Type::Text => "text",
            Type::Bool => "boolean",
            Type::Timestamp => "timestamptz",
            Type::Date => "date",
        }
    }
}

impl Value {
    /// The type a table column gets for this value when the flow did not cast it.
    pub fn natural_type(&self) -> Option<Type> {
        Some(match self {
            Value::Null => return None,
            Value::Raw(_) | Value::Text(_) => Type::Text,
            Value::Bool(_) => Type::Bool,
            Value::Int(_) => Type::Int,
            Value::Float(_) => Type::Float,
            Value::Decimal(_) => Type::Decimal,
            Value::Timestamp(_) => Type::Timestamp,
            Value::Date(_) => Type::Date,
        })
    }

    /// Converts to `ty`; the error says why in a few words. An empty text casts to null for
    /// every type but text.
    pub fn cast(self, ty: Type) -> Result<Value, CastError> {
        let text = match self {
            Value::Null => return Ok(Value::Null),
            Value::Raw(s) | Value::Text(s) => s,
            other => return cast_typed(other, ty),
        };
        if ty == Type::Text {
            return Ok(Value::Text(text));
        }
        let t = text.trim();
        if t.is_empty() {
            return Ok(Value::Null);
        }
        let bad = |what: &'static str| CastError::NotA {
            text: t.to_owned(),
            what,
        };
        Ok(match ty {
            Type::Text => unreachable!("handled above"),
            Type::Int => Value::Int(t.parse().map_err(|_| bad("an integer"))?),
            Type::Float => Value::Float(
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| bad("a number"))?,
            ),
            Type::Decimal => Value::Decimal(
                Decimal::from_str_exact(t)
                    .or_else(|_| Decimal::from_scientific(t))
                    .map_err(|_| bad("a decimal number"))?,
            ),
            Type::Bool => Value::Bool(match t.to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" => true,
                "false" | "f" | "no" | "n" | "0" => false,
                _ => return Err(bad("a boolean (true/false, yes/no, 1/0)")),
            }),
            Type::Timestamp => Value::Timestamp(
                parse_timestamp(t)
                    .ok_or_else(|| bad("a timestamp (RFC 3339 or YYYY-MM-DD HH:MM:SS)"))?,
            ),
            Type::Date => Value::Date(
                NaiveDate::parse_from_str(t, "%Y-%m-%d").map_err(|_| bad("a date (YYYY-MM-DD)"))?,
            ),
        })
    }

    /// Appends the value in Postgres COPY text format (`\N` for null, tabs and newlines escaped).
    pub fn write_copy(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("\\N"),
            Value::Raw(s) | Value::Text(s) if !s.contains(['\\', '\t', '\n', '\r']) => {
                out.push_str(s)
            }
            Value::Raw(s) | Value::Text(s) => {
                for c in s.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
            }
            Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
            Value::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
            Value::Float(f) if f.is_finite() => out.push_str(ryu::Buffer::new().format_finite(*f)),
            Value::Float(f) => out.push_str(if f.is_nan() {
                "NaN"
            } else if *f > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }),
            Value::Decimal(d) => {
                let _ = write!(out, "{d}");
            }
            Value::Timestamp(t) => write_timestamp(t, out),
            Value::Date(d) => {
                let _ = write!(out, "{d}");
            }
        }
    }

    /// The value as text for a CSV file (`None` for null: an empty field).
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Value::Null => return None,
            Value::Raw(s) | Value::Text(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Decimal(d) => d.to_string(),
            Value::Timestamp(t) => t.to_rfc3339(),
            Value::Date(d) => d.to_string(),
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            // Decimals keep every digit: as a JSON string.
            other => other.to_text().map_or(J::Null, J::String),
        }
    }

    pub fn from_json(v: serde_json::Value) -> Value {
        use serde_json::Value as J;
        match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::Text(s),
            other => Value::Text(other.to_string()),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]+00`, which Postgres reads, without chrono's formatter.
fn write_timestamp(t: &DateTime<Utc>, out: &mut String) {
    use chrono::{Datelike, Timelike};
    let (y, mo, d) = (t.year(), t.month(), t.day());
    let (h, mi, s) = (t.hour(), t.minute(), t.second());
    if !(0..=9999).contains(&y) {
        let _ = write!(out, "{}", t.to_rfc3339());
        return;
    }
    let mut digits = |n: u32, width: usize, sep: char| {
        let mut buf = [b'0'; 6];
        let mut n = n;
        for slot in buf[..width].iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend(buf[..width].iter().map(|&b| b as char));
        out.push(sep);
    };
    digits(y as u32, 4, '-');
    digits(mo, 2, '-');
    digits(d, 2, ' ');
    digits(h, 2, ':');
    digits(mi, 2, ':');
    let micros = t.nanosecond() / 1000;
    if micros > 0 {
        digits(s, 2, '.');
        digits(micros, 6, '+');
    } else {
        digits(s, 2, '+');
    }
    out.push_str("00");
}

fn cast_typed(v: Value, ty: Type) -> Result<Value, CastError> {
    Ok(match (v, ty) {
        (v, Type::Text) => Value::Text(v.to_text().unwrap_or_default()),
        (Value::Int(i), Type::Int) => Value::Int(i),
        (Value::Int(i), Type::Float) => Value::Float(i as f64),
        (Value::Int(i), Type::Decimal) => Value::Decimal(Decimal::from(i)),
        (Value::Float(f), Type::Float) => Value::Float(f),
        (Value::Float(f), Type::Int) if f.fract() == 0.0 && f.abs() < 9.0e18 => {
            Value::Int(f as i64)
        }
        (Value::Float(f), Type::Decimal) => {
            Value::Decimal(Decimal::try_from(f).map_err(|_| CastError::DecimalRange(f))?)
        }
        (Value::Decimal(d), Type::Decimal) => Value::Decimal(d),
        (Value::Decimal(d), Type::Float) => Value::Float(
            d.to_string()
                .parse()
                .map_err(|_| CastError::NotANumber(d))?,
        ),
        (Value::Decimal(d), Type::Int) if d.fract().is_zero() => Value::Int(
            d.to_string()
                .parse()
                .map_err(|_| CastError::IntegerRange(d))?,
        ),
        (Value::Bool(b), Type::Bool) => Value::Bool(b),
        (Value::Timestamp(t), Type::Timestamp) => Value::Timestamp(t),
        (Value::Timestamp(t), Type::Date) => Value::Date(t.date_naive()),
        (Value::Date(d), Type::Date) => Value::Date(d),
        (Value::Date(d), Type::Timestamp) => {
            Value::Timestamp(d.and_time(Default::default()).and_utc())
        }
        (value, to) => return Err(CastError::Impossible { value, to }),
    })
}

/// RFC 3339, or `YYYY-MM-DD HH:MM:SS[.f]` / `YYYY-MM-DDTHH:MM:SS[.f]` taken as UTC, or a date.
pub fn parse_timestamp(t: &str) -> Option<DateTime<Utc>> {
    if let Some(dt) = plain_timestamp(t) {
        return Some(dt);
    }
    if let Ok(dt) = DateTime::<FixedOffset>::parse_from_rfc3339(t) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = DateTime::<FixedOffset>::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(dt.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, format) {
            return Some(dt.and_utc());
        }
    }
    NaiveDate::from_str(t)
        .ok()
        .map(|d| d.and_time(Default::default()).and_utc())
}

/// `YYYY-MM-DD HH:MM:SS` or `YYYY-MM-DDTHH:MM:SS` exactly (UTC), without chrono's format
/// machinery: the common case, read about ten times faster.
fn plain_timestamp(t: &str) -> Option<DateTime<Utc>> {
    let b = t.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b' ' | b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let time = chrono::NaiveTime::from_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
    Some(date.and_time(time).and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts_text_and_says_why_not() {
        assert_eq!(Value::Raw("42".into()).cast(Type::Int), Ok(Value::Int(42)));
        assert_eq!(Value::Raw(" ".into()).cast(Type::Int), Ok(Value::Null));
        assert_eq!(
            Value::Raw("12.50".into()).cast(Type::Decimal),
            Ok(Value::Decimal(Decimal::new(1250, 2)))
        );
        assert_eq!(
            Value::Raw("x1".into())
                .cast(Type::Int)
                .map_err(|e| e.to_string()),
            Err("\"x1\" is not an integer".into())
        );
        assert_eq!(
            Value::Raw("2024-01-02 03:04:05".into()).cast(Type::Timestamp),
            Ok(Value::Timestamp(
                DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z")
                    .expect("rfc3339")
                    .with_timezone(&Utc)
            ))
        );
        assert_eq!(
            Value::Raw("2024-13-01".into()).cast(Type::Date),
            Err(CastError::NotA {
                text: "2024-13-01".into(),
                what: "a date (YYYY-MM-DD)"
            })
        );
        assert_eq!(Value::Float(2.0).cast(Type::Int), Ok(Value::Int(2)));
        assert_eq!(
            Value::Float(2.5).cast(Type::Int),
            Err(CastError::Impossible {
                value: Value::Float(2.5),
                to: Type::Int
            })
        );
    }

    #[test]
    fn timestamps_for_copy() {
        let mut out = String::new();
        let t = parse_timestamp("2024-01-02T03:04:05.25Z").expect("parses");
        Value::Timestamp(t).write_copy(&mut out);
        assert_eq!(out, "2024-01-02 03:04:05.250000+00");
    }

    #[test]
    fn copy_text_escapes() {
        let mut out = String::new();
        Value::Text("a\tb\\c\nd".into()).write_copy(&mut out);
        out.push('|');
        Value::Null.write_copy(&mut out);
        assert_eq!(out, "a\\tb\\\\c\\nd|\\N");
    }
}
