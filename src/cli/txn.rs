//! `capkv txn KEYSPACE`: an etcd-style transaction from the command line or stdin.
//!
//! A transaction is three lists: compares, then the operations run when every compare holds
//! (success), then those run otherwise (failure). They come from `--compare`, `--success` and
//! `--failure` (each repeatable), or, when none of those is given, from stdin as three blocks
//! separated by blank lines, the way `etcdctl txn` reads them. On a terminal the blocks are
//! prompted for; a blank line ends each one.
//!
//! The grammar, one compare or operation per line ([`LONG_ABOUT`] is the user's copy):
//! `val(KEY) OP VALUE`, `mod(KEY) OP N`, `ver(KEY) OP N` with OP one of `=`, `!=`, `<`, `>`;
//! `exists(KEY)`, `absent(KEY)`; and the operations `put KEY VALUE`, `get KEY`, `del KEY`.
//! A KEY or VALUE is a bare word or a double-quoted string with `\"`, `\\`, `\n`, `\t`, `\r`,
//! `\0` and `\xNN` escapes; with `--hex` it is hex after unquoting. Lines starting with `#`
//! are comments.
//!
//! CAVEATS: only cp keyspaces run transactions (an ap keyspace refuses with exit 3). A value
//! in a transaction is typed inline, so it is limited by the command line or stdin line, not
//! read from a file.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use serde::Serialize;

use super::input;
use super::output::{show, table, text_or_none, View};
use super::ClientOverrides;
use crate::client::Client;
use crate::error::Error;
use crate::proto::{self, compare, txn_op};

/// `capkv txn --help`: the grammar, as the user sees it.
pub const LONG_ABOUT: &str = "\
Transaction (cp keyspaces): if every compare holds, run the success operations, else the
failure ones. Exit 0 when the compares held, 1 when they did not.

Give the three lists with --compare, --success and --failure (each repeatable), or on stdin as
three blocks separated by blank lines (compares, success, failure), as etcdctl txn reads them:

  val(alice) = \"100\"
  val(bob) = \"50\"

  put alice 90
  put bob 60

  get alice

Compares:   val(KEY) OP VALUE   the value (bytes compared in order)
            mod(KEY) OP N       the revision of the last write (0 when absent)
            ver(KEY) OP N       the number of writes since creation (`write_count` of get)
            exists(KEY)         absent(KEY)
            OP is one of  =  !=  <  >
Operations: put KEY VALUE   get KEY   del KEY
KEY and VALUE are bare words or double-quoted strings (escapes \\\" \\\\ \\n \\t \\r \\0 \\xNN);
with --hex they are hex. Lines starting with # are comments.

With -o json: keyspace, succeeded, revision, results (op, key, key_hex, found, value,
value_hex, mod_revision, write_count). For put and del, found and value describe the key
before the operation.";

#[derive(Args, Debug)]
pub struct TxnArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    pub keyspace: String,
    /// A compare, e.g. 'val(alice) = 100' (repeatable; all must hold).
    #[arg(long, value_name = "COMPARE")]
    pub compare: Vec<String>,
    /// An operation run when every compare holds, e.g. 'put alice 90' (repeatable).
    #[arg(long, value_name = "OP")]
    pub success: Vec<String>,
    /// An operation run when a compare does not hold, e.g. 'get alice' (repeatable).
    #[arg(long, value_name = "OP")]
    pub failure: Vec<String>,
    /// Apply this transaction at most once per ID (see `capkv put --help`).
    #[arg(long, value_name = "ID", value_parser = super::kv::parse_request_id)]
    pub request_id: Option<proto::RequestId>,
}

/// A parsed transaction, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub compares: Vec<proto::Compare>,
    pub success: Vec<proto::TxnOp>,
    pub failure: Vec<proto::TxnOp>,
}

/// Splits a line into tokens: `(`, `)`, operators, bare words and quoted strings (unquoted).
fn tokens(line: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '<' | '>' => {
                chars.next();
                out.push(Token::Sym(c.to_string()));
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                }
                out.push(Token::Sym("=".into()));
            }
            '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err("'!' must be followed by '=' (write != for not equal)".into());
                }
                out.push(Token::Sym("!=".into()));
            }
            '"' => {
                chars.next();
                out.push(Token::Word(quoted(&mut chars)?));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "()<>=!\"".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Token::Word(word.into_bytes()));
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Sym(String),
    Word(Vec<u8>),
}

/// Reads a quoted string after its opening quote, resolving escapes.
fn quoted(chars: &mut std::iter::Peekable<std::str::Chars>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match chars.next() {
            None => return Err("a quoted string is not closed; end it with \"".into()),
            Some('"') => return Ok(out),
            Some('\\') => match chars.next() {
                Some('"') => out.push(b'"'),
                Some('\\') => out.push(b'\\'),
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('r') => out.push(b'\r'),
                Some('0') => out.push(0),
                Some('x') => {
                    let digits: String = chars.by_ref().take(2).collect();
                    let byte = u8::from_str_radix(&digits, 16)
                        .map_err(|_| format!("\\x{digits} is not a byte; write \\x and two hex digits"))?;
                    out.push(byte);
                }
                other => {
                    return Err(format!(
                        "unknown escape \\{}; use \\\" \\\\ \\n \\t \\r \\0 or \\xNN",
                        other.map(String::from).unwrap_or_default()
                    ))
                }
            },
            Some(c) => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn bytes(token: Option<Token>, what: &str, hex: bool) -> Result<Vec<u8>, String> {
    match token {
        Some(Token::Word(w)) => {
            let text = String::from_utf8(w.clone());
            match (hex, text) {
                (false, _) => Ok(w),
                (true, Ok(t)) => hex::decode(&t).map_err(|e| format!("the {what} '{t}' is not hex ({e})")),
                (true, Err(_)) => Err(format!("the {what} is not hex")),
            }
        }
        Some(Token::Sym(s)) => Err(format!("expected the {what}, found '{s}'")),
        None => Err(format!("the {what} is missing")),
    }
}

fn expect_sym(token: Option<Token>, sym: &str) -> Result<(), String> {
    match token {
        Some(Token::Sym(s)) if s == sym => Ok(()),
        Some(Token::Sym(s)) => Err(format!("expected '{sym}', found '{s}'")),
        Some(Token::Word(w)) => Err(format!("expected '{sym}', found '{}'", show(&w, false))),
        None => Err(format!("expected '{sym}' at the end of the line")),
    }
}

fn end(tokens: &mut impl Iterator<Item = Token>) -> Result<(), String> {
    match tokens.next() {
        None => Ok(()),
        Some(Token::Sym(s)) => Err(format!("unexpected '{s}' after the end")),
        Some(Token::Word(w)) => Err(format!("unexpected '{}' after the end", show(&w, false))),
    }
}

/// Parses one compare line, e.g. `val("alice") = "100"` or `mod(k) < 7`.
pub fn parse_compare(line: &str, hex: bool) -> Result<proto::Compare, String> {
    let mut t = tokens(line)?.into_iter();
    let target = match t.next() {
        Some(Token::Word(w)) => String::from_utf8_lossy(&w).to_lowercase(),
        _ => return Err("a compare starts with val(, mod(, ver(, exists( or absent(".into()),
    };
    expect_sym(t.next(), "(")?;
    let key = bytes(t.next(), "key", hex)?;
    expect_sym(t.next(), ")")?;
    let mut compare = proto::Compare {
        key,
        ..Default::default()
    };
    let target = match target.as_str() {
        "exists" | "absent" => {
            end(&mut t)?;
            compare.set_target(compare::Target::Exists);
            compare.set_op(compare::Op::Equal);
            compare.number = u64::from(target == "exists");
            return Ok(compare);
        }
        "val" | "value" => compare::Target::Value,
        "mod" => compare::Target::ModRevision,
        "ver" | "version" => compare::Target::Version,
        other => {
            return Err(format!(
                "unknown compare '{other}'; use val, mod, ver, exists or absent"
            ))
        }
    };
    compare.set_target(target);
    let op = match t.next() {
        Some(Token::Sym(s)) if s == "=" => compare::Op::Equal,
        Some(Token::Sym(s)) if s == "!=" => compare::Op::NotEqual,
        Some(Token::Sym(s)) if s == "<" => compare::Op::Less,
        Some(Token::Sym(s)) if s == ">" => compare::Op::Greater,
        _ => return Err("expected one of = != < > after the key".into()),
    };
    compare.set_op(op);
    if target == compare::Target::Value {
        compare.value = bytes(t.next(), "value", hex)?;
    } else {
        let number = bytes(t.next(), "number", false)?;
        let text = String::from_utf8_lossy(&number).to_string();
        compare.number = text
            .parse()
            .map_err(|_| format!("'{text}' is not a revision or write count; write a whole number"))?;
    }
    end(&mut t)?;
    Ok(compare)
}

/// Parses one operation line: `put KEY VALUE`, `get KEY` or `del KEY`.
pub fn parse_op(line: &str, hex: bool) -> Result<proto::TxnOp, String> {
    let mut t = tokens(line)?.into_iter();
    let verb = match t.next() {
        Some(Token::Word(w)) => String::from_utf8_lossy(&w).to_lowercase(),
        _ => return Err("an operation starts with put, get or del".into()),
    };
    let key = bytes(t.next(), "key", hex)?;
    let op = match verb.as_str() {
        "put" => {
            let value = bytes(t.next(), "value", hex)?;
            input::check_size(&value).map_err(|e| e.to_string())?;
            txn_op::Op::Put(proto::PutOp { key, value })
        }
        "get" => txn_op::Op::Get(proto::GetOp { key }),
        "del" | "delete" => txn_op::Op::Delete(proto::DeleteOp { key }),
        other => return Err(format!("unknown operation '{other}'; use put, get or del")),
    };
    end(&mut t)?;
    Ok(proto::TxnOp { op: Some(op) })
}

/// The three blocks of a transaction as (line number, text) pairs.
type Blocks = [Vec<(usize, String)>; 3];

const PROMPTS: [&str; 3] = [
    "compares (val/mod/ver/exists/absent), then a blank line:",
    "success operations (put/get/del), then a blank line:",
    "failure operations (put/get/del), then a blank line:",
];

/// Splits stdin into the three blocks; a blank line ends a block, comments are skipped.
/// With `prompt`, each block is announced (interactive use) and reading stops after the third.
fn read_blocks(reader: impl BufRead, mut prompt: Option<&mut dyn Write>) -> Result<Blocks, String> {
    let mut blocks: Blocks = Default::default();
    let mut block = 0;
    if let Some(p) = prompt.as_mut() {
        let _ = writeln!(p, "{}", PROMPTS[0]);
    }
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read the transaction from stdin: {e}"))?;
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if trimmed.is_empty() {
            block += 1;
            if block == 3 {
                break;
            }
            if let Some(p) = prompt.as_mut() {
                let _ = writeln!(p, "{}", PROMPTS[block]);
            }
            continue;
        }
        blocks[block].push((index + 1, trimmed.to_string()));
    }
    Ok(blocks)
}

/// Parses the three blocks, naming the line of the first mistake.
fn parse_blocks(blocks: &Blocks, hex: bool) -> Result<Parsed, String> {
    let at = |line: usize, e: String| format!("line {line}: {e}");
    let ops = |block: &Vec<(usize, String)>| {
        block
            .iter()
            .map(|(n, l)| parse_op(l, hex).map_err(|e| at(*n, e)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Parsed {
        compares: blocks[0]
            .iter()
            .map(|(n, l)| parse_compare(l, hex).map_err(|e| at(*n, e)))
            .collect::<Result<_, _>>()?,
        success: ops(&blocks[1])?,
        failure: ops(&blocks[2])?,
    })
}

/// Parses a transaction as it would come on stdin (see [`LONG_ABOUT`]).
#[cfg(test)]
fn parse_text(text: &str, hex: bool) -> Result<Parsed, String> {
    parse_blocks(&read_blocks(text.as_bytes(), None)?, hex)
}

impl Parsed {
    /// Refuses a transaction with nothing in it: almost always empty stdin, not intent.
    fn non_empty(self) -> Result<Self, Error> {
        if self.compares.is_empty() && self.success.is_empty() && self.failure.is_empty() {
            return Err(Error::InvalidInput(
                "the transaction is empty; give --compare/--success/--failure, or write its three \
                 blocks on stdin (see `capkv txn --help`)"
                    .into(),
            ));
        }
        Ok(self)
    }
}

/// The transaction from the flags, or from stdin when no flag lists one.
fn parse_args(a: &TxnArgs, hex: bool) -> Result<Parsed, Error> {
    let usage = |e: String| Error::InvalidInput(format!("{e}; see `capkv txn --help` for the grammar"));
    if a.compare.is_empty() && a.success.is_empty() && a.failure.is_empty() {
        let stdin = std::io::stdin();
        let mut stderr = std::io::stderr();
        let prompt: Option<&mut dyn Write> = stdin.is_terminal().then_some(&mut stderr);
        let blocks = read_blocks(stdin.lock(), prompt).map_err(usage)?;
        return parse_blocks(&blocks, hex).map_err(usage);
    }
    let ops = |list: &[String], what: &str| {
        list.iter()
            .map(|l| parse_op(l, hex).map_err(|e| usage(format!("--{what} '{l}': {e}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Parsed {
        compares: a
            .compare
            .iter()
            .map(|l| parse_compare(l, hex).map_err(|e| usage(format!("--compare '{l}': {e}"))))
            .collect::<Result<_, _>>()?,
        success: ops(&a.success, "success")?,
        failure: ops(&a.failure, "failure")?,
    })
}

/// One operation's result. For put and del, `found` and the value are the key's state before.
#[derive(Debug, Serialize)]
pub struct TxnOpView {
    pub op: &'static str,
    pub key: Option<String>,
    pub key_hex: String,
    pub found: bool,
    pub value: Option<String>,
    pub value_hex: Option<String>,
    pub mod_revision: u64,
    pub write_count: u64,
    #[serde(skip)]
    raw: (Vec<u8>, Option<Vec<u8>>),
}

#[derive(Debug, Serialize)]
pub struct TxnView {
    pub keyspace: String,
    /// Whether every compare held (and so the success operations ran).
    pub succeeded: bool,
    pub revision: u64,
    pub results: Vec<TxnOpView>,
}

impl TxnView {
    pub fn new(keyspace: &str, parsed: &Parsed, r: proto::TxnResponse) -> Self {
        let ran = if r.succeeded { &parsed.success } else { &parsed.failure };
        let results = ran
            .iter()
            .zip(r.results)
            .map(|(op, result)| {
                let (name, key) = match &op.op {
                    Some(txn_op::Op::Put(p)) => ("put", p.key.clone()),
                    Some(txn_op::Op::Get(g)) => ("get", g.key.clone()),
                    Some(txn_op::Op::Delete(d)) => ("del", d.key.clone()),
                    None => ("none", Vec::new()),
                };
                let kv = result.kv.unwrap_or_default();
                let value = result.found.then_some(kv.value);
                TxnOpView {
                    op: name,
                    key: text_or_none(&key),
                    key_hex: hex::encode(&key),
                    found: result.found,
                    value: value.as_deref().and_then(text_or_none),
                    value_hex: value.as_deref().map(hex::encode),
                    mod_revision: kv.mod_revision,
                    write_count: kv.version,
                    raw: (key, value),
                }
            })
            .collect();
        Self {
            keyspace: keyspace.into(),
            succeeded: r.succeeded,
            revision: r.revision,
            results,
        }
    }
}

impl View for TxnView {
    fn text(&self, hex: bool) -> String {
        let verdict = if self.succeeded { "SUCCESS" } else { "FAILURE" };
        if self.results.is_empty() {
            return verdict.into();
        }
        let mut t = table(&["OP", "KEY", "RESULT"]);
        for r in &self.results {
            let result = match (r.op, &r.raw.1) {
                ("get", Some(v)) => show(v, hex),
                ("put", _) => "OK".into(),
                ("del", Some(_)) => "deleted".into(),
                _ => "(not found)".into(),
            };
            t.add_row(vec![r.op.to_string(), show(&r.raw.0, hex), result]);
        }
        format!("{verdict}\n{t}")
    }

    fn no(&self, _hex: bool) -> Option<String> {
        (!self.succeeded).then(|| {
            format!(
                "the compares did not hold in keyspace '{}': ran the {} failure operation(s) instead",
                self.keyspace,
                self.results.len()
            )
        })
    }
}

/// `capkv txn`: parse, send once, report whether the compares held.
pub async fn run(client: &Client, a: &TxnArgs, hex: bool) -> Result<TxnView, Error> {
    let parsed = parse_args(a, hex)?.non_empty()?;
    let req = proto::TxnRequest {
        keyspace: a.keyspace.clone(),
        compares: parsed.compares.clone(),
        success: parsed.success.clone(),
        failure: parsed.failure.clone(),
        request_id: a.request_id.clone(),
    };
    let r = client.txn(req).await?;
    Ok(TxnView::new(&a.keyspace, &parsed, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::Report;

    fn value_compare(key: &str, value: &str) -> proto::Compare {
        let mut c = proto::Compare {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        c.set_target(compare::Target::Value);
        c
    }

    fn put(key: &str, value: &str) -> proto::TxnOp {
        proto::TxnOp {
            op: Some(txn_op::Op::Put(proto::PutOp {
                key: key.into(),
                value: value.into(),
            })),
        }
    }

    #[test]
    fn compares_parse_every_target_and_operator() {
        assert_eq!(
            parse_compare("val(\"alice\") = \"100\"", false).unwrap(),
            value_compare("alice", "100")
        );
        assert_eq!(
            parse_compare("value(alice)==100", false).unwrap(),
            value_compare("alice", "100")
        );
        let c = parse_compare("mod(k) < 7", false).unwrap();
        assert_eq!(
            (c.target(), c.op(), c.number),
            (compare::Target::ModRevision, compare::Op::Less, 7)
        );
        let c = parse_compare("ver(k) > 0", false).unwrap();
        assert_eq!(
            (c.target(), c.op(), c.number),
            (compare::Target::Version, compare::Op::Greater, 0)
        );
        let c = parse_compare("val(k) != \"a b\"", false).unwrap();
        assert_eq!((c.op(), c.value.as_slice()), (compare::Op::NotEqual, b"a b".as_slice()));
        let c = parse_compare("exists(k)", false).unwrap();
        assert_eq!(
            (c.target(), c.op(), c.number),
            (compare::Target::Exists, compare::Op::Equal, 1)
        );
        assert_eq!(parse_compare("absent(k)", false).unwrap().number, 0);
        let c = parse_compare("val(ff00) = 01", true).unwrap();
        assert_eq!((c.key, c.value), (vec![0xff, 0], vec![1]));
    }

    #[test]
    fn bad_compares_say_what_is_wrong() {
        let err = |line: &str| parse_compare(line, false).unwrap_err();
        assert!(err("size(k) = 1").contains("unknown compare 'size'"));
        assert!(err("val(k) ~ 1").contains("expected one of"));
        assert!(err("val(k) =").contains("value is missing"));
        assert!(err("mod(k) = soon").contains("whole number"));
        assert!(err("val(\"k) = 1").contains("not closed"));
        assert!(err("exists(k) = 1").contains("unexpected '='"));
        assert!(err("val k = 1").contains("expected '('"));
        assert!(parse_compare("val(zz) = 1", true).unwrap_err().contains("not hex"));
    }

    #[test]
    fn operations_parse_with_quotes_and_escapes() {
        assert_eq!(parse_op("put alice 90", false).unwrap(), put("alice", "90"));
        assert_eq!(
            parse_op("PUT \"a b\" \"x\\\"y\\n\"", false).unwrap(),
            put("a b", "x\"y\n")
        );
        let op = parse_op("put k \"\\x00\\xff\"", false).unwrap();
        match op.op {
            Some(txn_op::Op::Put(p)) => assert_eq!(p.value, vec![0, 0xff]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_op("get k", false).unwrap().op, Some(txn_op::Op::Get(_))));
        assert!(matches!(
            parse_op("delete k", false).unwrap().op,
            Some(txn_op::Op::Delete(_))
        ));
        assert!(parse_op("put k", false).unwrap_err().contains("value is missing"));
        assert!(parse_op("get k extra", false)
            .unwrap_err()
            .contains("unexpected 'extra'"));
        assert!(parse_op("move a b", false)
            .unwrap_err()
            .contains("unknown operation 'move'"));
        assert!(parse_op("put k \"\\q\"", false).unwrap_err().contains("unknown escape"));
    }

    #[test]
    fn stdin_has_three_blocks_separated_by_blank_lines() {
        let text = "# a transfer\nval(alice) = \"100\"\nval(bob) = \"50\"\n\nput alice 90\nput bob 60\n\nget alice\n";
        let parsed = parse_text(text, false).unwrap();
        assert_eq!(
            parsed.compares,
            vec![value_compare("alice", "100"), value_compare("bob", "50")]
        );
        assert_eq!(parsed.success, vec![put("alice", "90"), put("bob", "60")]);
        assert_eq!(parsed.failure.len(), 1);
        // An empty first block: no compares, so the success operations run.
        let parsed = parse_text("\nput a 1\n", false).unwrap();
        assert!(parsed.compares.is_empty() && parsed.failure.is_empty());
        assert_eq!(parsed.success, vec![put("a", "1")]);
        // Lines after the third block's closing blank line are not read.
        assert!(parse_text("\n\n\n\nput a 1\n", false).unwrap().failure.is_empty());
        let empty = parse_text("# nothing\n", false).unwrap().non_empty().unwrap_err();
        assert_eq!(empty.exit_code(), 5);
        assert!(empty.to_string().contains("the transaction is empty"), "{empty}");
        assert!(parse_text("absent(a)\n", false).unwrap().non_empty().is_ok());
        let err = parse_text("val(a) = 1\n\nput a\n", false).unwrap_err();
        assert!(err.starts_with("line 3: "), "{err}");
    }

    #[test]
    fn prompts_announce_each_block() {
        let mut prompts = Vec::new();
        let blocks = read_blocks("val(a) = 1\n\nput a 2\n\n\nignored\n".as_bytes(), Some(&mut prompts)).unwrap();
        assert_eq!(blocks[0].len(), 1);
        assert_eq!(blocks[1].len(), 1);
        assert!(blocks[2].is_empty());
        let prompts = String::from_utf8(prompts).unwrap();
        assert_eq!(prompts.lines().count(), 3, "{prompts}");
        assert!(prompts.starts_with("compares"));
    }

    #[test]
    fn results_render_as_table_and_json() {
        let parsed = parse_text("val(a) = 1\n\nput a 2\nget b\n", false).unwrap();
        let response = proto::TxnResponse {
            succeeded: true,
            revision: 12,
            results: vec![
                proto::TxnOpResult {
                    found: true,
                    kv: Some(proto::KeyValue {
                        key: b"a".to_vec(),
                        value: b"1".to_vec(),
                        mod_revision: 4,
                        version: 1,
                        ..Default::default()
                    }),
                },
                proto::TxnOpResult::default(),
            ],
        };
        let r = Report::of(&TxnView::new("bank", &parsed, response), false);
        assert_eq!(
            r.json,
            serde_json::json!({"keyspace": "bank", "succeeded": true, "revision": 12, "results": [
                {"op": "put", "key": "a", "key_hex": "61", "found": true, "value": "1", "value_hex": "31",
                 "mod_revision": 4, "write_count": 1},
                {"op": "get", "key": "b", "key_hex": "62", "found": false, "value": null, "value_hex": null,
                 "mod_revision": 0, "write_count": 0}]})
        );
        let expected = "SUCCESS\n┌─────────────────────────┐\n│ OP    KEY   RESULT      │\n╞═════════════════════════╡\n│ put   a     OK          │\n│ get   b     (not found) │\n└─────────────────────────┘";
        assert_eq!(r.text, expected);
        assert_eq!(r.no, None);
    }

    #[test]
    fn failed_compares_are_a_no() {
        let parsed = parse_text("val(a) = 1\n", false).unwrap();
        let response = proto::TxnResponse {
            succeeded: false,
            revision: 3,
            results: vec![],
        };
        let r = Report::of(&TxnView::new("bank", &parsed, response), false);
        assert_eq!(r.text, "FAILURE");
        assert_eq!(r.json["succeeded"], false);
        assert!(r.no.unwrap().contains("compares did not hold"));
    }
}
