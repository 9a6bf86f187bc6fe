//! Filter and compute expressions: CEL (the `cel` crate), compiled once per flow and evaluated
//! per row against the row's columns. Not a parser of our own. A compile error is an
//! `ExprError` (with its place, for the flow's problems); an evaluation error is an
//! `EvalError` (a bad row's reason).
//!
//! Binding: a column that came from a CSV file untyped (not cast yet) is a number in an
//! expression when its text reads as one, a string otherwise; decimals are doubles; dates are
//! timestamps at midnight UTC. CEL does not mix int and double in arithmetic (`int_col * 0.5`
//! is an error: write `double(int_col) * 0.5`), but compares them freely.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::types::{CelBool, CelDouble, CelInt, CelNull, CelString, CelTimestamp};
use cel::common::value::CowVal;
use cel::{Context, Env, Program};
use chrono::{DateTime, Utc};

use crate::pipeline::error::EvalError;
use crate::pipeline::value::Value;

/// Functions that bind a variable of their own (`list.exists(x, x > 1)`): their variables are
/// not columns.
const MACROS: &[&str] = &["all", "exists", "exists_one", "map", "filter"];

/// A compiled expression and its source.
#[derive(Clone)]
pub struct Expr {
    source: String,
    program: Arc<Program>,
    env: Arc<Env>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// Why an expression does not compile: 1-based line and column inside the expression.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Expr {
    pub fn compile(source: &str) -> Result<Expr, ExprError> {
        let env = Arc::new(Env::stdlib());
        let program = env.compile(source).map_err(|e| {
            let first = e.errors.first();
            let (line, column) = first.map_or((1, 1), |p| {
                (p.pos.0.max(1) as usize, p.pos.1.max(1) as usize)
            });
            let message = first.map_or_else(|| e.to_string(), |p| p.msg.clone());
            ExprError {
                line,
                column,
                message,
            }
        })?;
        Ok(Expr {
            source: source.to_owned(),
            program: Arc::new(program),
            env,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The column names the expression reads, or `None` when it uses a macro that binds
    /// names of its own (those cannot be told apart from columns here).
    pub fn columns(&self) -> Option<Vec<String>> {
        let refs = self.program.references();
        if refs.functions().iter().any(|f| MACROS.contains(f)) {
            return None;
        }
        let mut names: Vec<String> = refs.variables().iter().map(|v| (*v).to_owned()).collect();
        names.sort();
        Some(names)
    }

    /// Evaluates against one row: `names` maps column names to indexes in `values`.
    pub fn eval(
        &self,
        names: &HashMap<String, usize>,
        values: &[Value],
    ) -> Result<Value, EvalError> {
        let row = RowVars { names, values };
        let mut ctx = Context::with_env(self.env.clone());
        ctx.set_variable_resolver(&row);
        let out = self.program.execute(&ctx).map_err(EvalError::Execution)?;
        from_cel(out)
    }
}

struct RowVars<'a> {
    names: &'a HashMap<String, usize>,
    values: &'a [Value],
}

impl cel::context::VariableResolver for RowVars<'_> {
    fn resolve<'b>(&'b self, var: &str) -> Option<CowVal<'b, 'b>> {
        let value = self.values.get(*self.names.get(var)?)?;
        Some(match value {
            Value::Null => CowVal::owned(CelNull),
            Value::Raw(s) => match number(s) {
                Some(f) => CowVal::owned(CelDouble::from(f)),
                None => CowVal::owned(CelString::from(s.as_str())),
            },
            Value::Text(s) => CowVal::owned(CelString::from(s.as_str())),
            Value::Bool(b) => CowVal::owned(CelBool::from(*b)),
            Value::Int(i) => CowVal::owned(CelInt::from(*i)),
            Value::Float(f) => CowVal::owned(CelDouble::from(*f)),
            Value::Decimal(d) => CowVal::owned(CelDouble::from(
                d.to_string().parse::<f64>().unwrap_or(f64::NAN),
            )),
            Value::Timestamp(t) => CowVal::owned(CelTimestamp::from(t.fixed_offset())),
            Value::Date(d) => CowVal::owned(CelTimestamp::from(
                d.and_time(Default::default()).and_utc().fixed_offset(),
            )),
        })
    }
}

/// A plain decimal number (`-12`, `3.5`, `1e3`), not `inf`, `nan` or `0x10`.
fn number(s: &str) -> Option<f64> {
    let t = s.trim();
    let plain = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && t.bytes().any(|b| b.is_ascii_digit());
    if !plain {
        return None;
    }
    t.parse::<f64>().ok().filter(|f| f.is_finite())
}

fn from_cel(v: cel::Value) -> Result<Value, EvalError> {
    Ok(match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(b),
        cel::Value::Int(i) => Value::Int(i),
        cel::Value::UInt(u) => {
            Value::Int(i64::try_from(u).map_err(|_| EvalError::IntegerRange(u))?)
        }
        cel::Value::Float(f) => Value::Float(f),
        cel::Value::String(s) => Value::Text(s.as_ref().clone()),
        cel::Value::Timestamp(t) => Value::Timestamp(DateTime::<Utc>::from(t)),
        other => {
            return Err(EvalError::NotAColumnValue {
                found: format!("{other:?}"),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(cols: &[&str]) -> HashMap<String, usize> {
        cols.iter()
            .enumerate()
            .map(|(i, c)| ((*c).to_owned(), i))
            .collect()
    }

    #[test]
    fn untyped_numbers_are_numbers_and_text_is_text() {
        let f = Expr::compile("amount > 100 && customer_name != ''").expect("compiles");
        let n = names(&["amount", "customer_name"]);
        let row = |a: &str, c: &str| vec![Value::Raw(a.into()), Value::Raw(c.into())];
        assert_eq!(f.eval(&n, &row("150.5", "acme")), Ok(Value::Bool(true)));
        assert_eq!(f.eval(&n, &row("99", "acme")), Ok(Value::Bool(false)));
        assert_eq!(f.eval(&n, &row("150", "")), Ok(Value::Bool(false)));
        let c = Expr::compile("amount * 0.92").expect("compiles");
        assert_eq!(c.eval(&n, &row("100", "x")), Ok(Value::Float(92.0)));
        assert_eq!(
            f.columns(),
            Some(vec!["amount".into(), "customer_name".into()])
        );
    }

    #[test]
    fn errors_have_a_place_and_a_reason() {
        let e = Expr::compile("amount >").expect_err("incomplete");
        assert_eq!((e.line, e.column), (1, 9), "{e:?}");
        let e = Expr::compile("a > 1 &&\n  b +* 2").expect_err("bad operator");
        assert_eq!(e.line, 2, "{e:?}");
        let int_times_double = Expr::compile("n * 0.5").expect("compiles");
        let err = int_times_double
            .eval(&names(&["n"]), &[Value::Int(3)])
            .expect_err("int * double")
            .to_string();
        assert!(err.contains("double(x)"), "{err}");
    }
}
