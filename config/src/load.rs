//! Loading: TOML text → environment overrides → typed [`Config`] → [`Config::validate`].
//!
//! The pipeline works on a `toml::Value` tree so that overrides are plain tree
//! edits and every error can be named by its dotted key path:
//!
//! ```text
//!  text ──parse──▶ toml::Value ──TRIBUTARY_A__B=v────▶ toml::Value ──serde_path_to_error──▶ Config ──validate──▶ Ok
//!   │ syntax error      │ bad variable name                │ unknown key / wrong type        │ range, cross-field
//!   ▼                   ▼                                  ▼                                 ▼
//!                     ConfigError::Invalid(every problem found, one per line)
//! ```
//!
//! Serde stops at the first error, so deserialization runs in rounds: the
//! offending key is removed from the tree, the problem recorded, and the tree
//! deserialized again, until it succeeds. Semantic validation then runs on the
//! result (skipping keys that were removed, whose values are stand-in defaults).
//! A problem whose key was set from the environment names the variable.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_path_to_error::Segment;
use toml::Value;

use crate::Config;

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "TRIBUTARY_";

/// Deserialization rounds before giving up (each round removes one bad key, so this only bounds pathological files).
const MAX_ROUNDS: usize = 256;

/// One problem in a configuration: where (dotted key path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `mqtt.max_packet_size` or `authorization.rules[0].topics`;
    /// for a syntax error, the position (`line 3, column 7`); for a malformed
    /// override variable, the variable's name.
    pub key: String,
    /// What is wrong, in a sentence fragment (`must be at least 1, got 0`).
    pub message: String,
}

impl ConfigProblem {
    /// Builds a problem from a key path and a message.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that was asked for.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration was read but is wrong: every problem found, unknown keys and type errors
    /// first (ordered by key), then semantic problems.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<ConfigProblem>),
}

impl ConfigError {
    /// The problems of an [`ConfigError::Invalid`]; empty for [`ConfigError::Io`].
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid(problems) => problems,
        }
    }
}

fn join_lines(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Parse TOML text; on failure return every problem found with its dotted key path
    /// (e.g. `mqtt.max_packet_size: must be between 2 and 268435460, got 1`).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_str_with_env(text, std::iter::empty())
    }

    /// Read a file, apply environment overrides ([`ENV_PREFIX`]), validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut env = Vec::new();
        let mut problems = Vec::new();
        for (name, value) in std::env::vars_os() {
            if !name.to_string_lossy().starts_with(ENV_PREFIX) {
                continue;
            }
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => env.push((name, value)),
                (Ok(name), Err(_)) => {
                    problems.push(ConfigProblem::new(name, "value is not valid UTF-8"))
                }
                (Err(name), _) => problems.push(ConfigProblem::new(
                    name.to_string_lossy(),
                    "variable name is not valid UTF-8",
                )),
            }
        }
        build(&text, env, problems)
    }

    /// Apply overrides from environment variables `TRIBUTARY_SECTION__KEY=value`, then
    /// deserialize and validate.
    ///
    /// Double underscores separate levels and keys are lowercased:
    /// `TRIBUTARY_MQTT__MAX_PACKET_SIZE=2048`,
    /// `TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND=0.0.0.0:11883`. A numeric level
    /// indexes an existing array (`TRIBUTARY_AUTHORIZATION__RULES__0__PERMISSION=deny`).
    /// Values are read as TOML (`2048`, `true`, `1.5`, `["a/#"]`) when they parse,
    /// otherwise as strings; where the default value of the key is a string
    /// (names, durations, addresses, enums) the raw text is always a string.
    /// Variables without the prefix are ignored, so the whole process environment
    /// may be passed; a `TRIBUTARY_*` variable that names no configuration key is
    /// an error. Overrides are applied in variable-name order.
    pub fn from_toml_str_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        build(text, env.into_iter().collect(), Vec::new())
    }
}

/// The whole pipeline; `problems` may already hold environment problems found by the caller.
fn build(
    text: &str,
    mut env: Vec<(String, String)>,
    mut problems: Vec<ConfigProblem>,
) -> Result<Config, ConfigError> {
    let table: toml::Table = match toml::from_str(text) {
        Ok(table) => table,
        Err(e) => {
            problems.push(syntax_problem(text, &e));
            return Err(ConfigError::Invalid(problems));
        }
    };
    let mut tree = Value::Table(table);

    env.retain(|(name, _)| name.starts_with(ENV_PREFIX));
    env.sort();
    let defaults = Value::try_from(Config::default()).ok();
    let mut origins: Vec<(String, String)> = Vec::new();
    for (name, raw) in &env {
        match apply_override(&mut tree, defaults.as_ref(), name, raw) {
            Ok(path) => origins.push((path, name.clone())),
            Err(problem) => problems.push(problem),
        }
    }

    let config = deserialize_and_validate(tree, &mut problems);

    for problem in &mut problems {
        if let Some((_, var)) = origins
            .iter()
            .rev()
            .find(|(path, _)| is_under(&problem.key, path) || is_under(path, &problem.key))
        {
            problem.message = format!("{} (set by environment variable {var})", problem.message);
        }
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

/// Whether `key` is `prefix` or a key below it (`a.b` and `a.b[0]` are under `a.b`; `a.bc` is not).
fn is_under(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

fn syntax_problem(text: &str, e: &toml::de::Error) -> ConfigProblem {
    let message = format!("invalid TOML: {}", e.message().trim_end());
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            ConfigProblem::new(format!("line {line}, column {column}"), message)
        }
        None => ConfigProblem::new("(file)", message),
    }
}

// ---------------------------------------------------------------------------
// Environment overrides

/// Sets the key named by `var` in `tree`; returns the dotted path set.
fn apply_override(
    tree: &mut Value,
    defaults: Option<&Value>,
    var: &str,
    raw: &str,
) -> Result<String, ConfigProblem> {
    let rest = var.strip_prefix(ENV_PREFIX).unwrap_or(var);
    if rest.starts_with('_') {
        return Err(ConfigProblem::new(
            var,
            "not a configuration key: the prefix is `TRIBUTARY_` with one underscore \
             (TRIBUTARY_SECTION__KEY, e.g. TRIBUTARY_MQTT__MAX_PACKET_SIZE)",
        ));
    }
    let levels: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if levels.len() < 2 {
        return Err(ConfigProblem::new(
            var,
            "not a configuration key: every TRIBUTARY_* variable must name one, as \
             TRIBUTARY_SECTION__KEY with levels separated by `__`",
        ));
    }
    if levels.iter().any(String::is_empty) {
        return Err(ConfigProblem::new(
            var,
            "empty key level; expected TRIBUTARY_SECTION__KEY with levels separated by `__`",
        ));
    }

    let mut path = String::new();
    let mut node = tree;
    let mut default = defaults;
    for (i, level) in levels.iter().enumerate() {
        let last = i + 1 == levels.len();
        match node {
            Value::Table(table) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(level);
                default = default.and_then(|d| d.get(level.as_str()));
                if last {
                    table.insert(level.clone(), env_value(raw, default));
                    return Ok(path);
                }
                // A table the file does not mention starts as its default, so that
                // e.g. adding `listeners.tcp.extra` keeps `listeners.tcp.default`.
                node = table.entry(level.clone()).or_insert_with(|| match default {
                    Some(Value::Table(t)) => Value::Table(t.clone()),
                    _ => Value::Table(toml::Table::new()),
                });
            }
            Value::Array(items) => {
                let len = items.len();
                let Some(item) = level.parse::<usize>().ok().and_then(|i| items.get_mut(i)) else {
                    return Err(ConfigProblem::new(
                        var,
                        format!("cannot set `{path}[{level}]`: `{path}` has {len} entries"),
                    ));
                };
                path.push_str(&format!("[{level}]"));
                default = None;
                if last {
                    *item = env_value(raw, None);
                    return Ok(path);
                }
                node = item;
            }
            _ => {
                return Err(ConfigProblem::new(
                    var,
                    format!(
                        "cannot set `{path}.{}`: `{path}` is not a table",
                        levels[i..].join(".")
                    ),
                ))
            }
        }
    }
    // `levels` is never empty (split yields at least one item), so the loop returned.
    Err(ConfigProblem::new(var, "no key given"))
}

/// Reads an override value: raw text where the default is a string, else TOML if it parses, else a string.
fn env_value(raw: &str, default: Option<&Value>) -> Value {
    if matches!(default, Some(Value::String(_))) {
        return Value::String(raw.to_owned());
    }
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) if t.len() == 1 => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        _ => Value::String(raw.to_owned()),
    }
}

// ---------------------------------------------------------------------------
// Deserialization in rounds

/// One step of a key path.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn display_path(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Array entries removed so far, by the array's original path, as original indices (sorted).
#[derive(Default)]
struct Removed(BTreeMap<String, Vec<usize>>);

impl Removed {
    /// Maps a path in the current (pruned) tree to the same entry's path in the original tree.
    fn original(&self, steps: &[Step]) -> Vec<Step> {
        let mut out = Vec::with_capacity(steps.len());
        for step in steps {
            match step {
                Step::Key(k) => out.push(Step::Key(k.clone())),
                Step::Index(i) => {
                    let mut index = *i;
                    for gone in self.0.get(&display_path(&out)).into_iter().flatten() {
                        if *gone <= index {
                            index += 1;
                        }
                    }
                    out.push(Step::Index(index));
                }
            }
        }
        out
    }

    fn record(&mut self, array: String, index: usize) {
        let gone = self.0.entry(array).or_default();
        gone.push(index);
        gone.sort_unstable();
    }
}

/// Deserializes, removing each offending key and retrying so that every such problem is
/// reported, then validates what remains. Problem keys name entries as they are in the
/// original tree even after earlier array entries were removed.
fn deserialize_and_validate(mut tree: Value, problems: &mut Vec<ConfigProblem>) -> Option<Config> {
    let mut removed = Removed::default();
    let mut removed_keys: Vec<String> = Vec::new();
    let mut config = None;
    for _ in 0..MAX_ROUNDS {
        let err = match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(err) => err,
        };
        let mut steps = Vec::new();
        for segment in err.path().iter() {
            match segment {
                Segment::Map { key } => steps.push(Step::Key(key.clone())),
                Segment::Seq { index } => steps.push(Step::Index(*index)),
                Segment::Enum { .. } | Segment::Unknown => break,
            }
        }
        let original = removed.original(&steps);
        let key = display_path(&original);
        let message = err.inner().message().trim_end().to_owned();
        // Removing a bad required field makes its struct report it missing next
        // round; that echo is not a second problem.
        let echo = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .is_some_and(|field| removed_keys.iter().any(|r| *r == format!("{key}.{field}")));
        if !echo {
            let shown = if key.is_empty() {
                "(root)".to_owned()
            } else {
                key.clone()
            };
            problems.push(ConfigProblem::new(shown, message));
        }
        if !remove(&mut tree, &steps) {
            return None;
        }
        if let Some((Step::Index(i), parent)) = original.split_last() {
            removed.record(display_path(parent), *i);
        }
        removed_keys.push(key);
    }
    let config = config?;
    for mut problem in config.validate() {
        if !removed.0.is_empty() {
            problem.key = display_path(&removed.original(&parse_path(&problem.key)));
        }
        // A removed key holds a stand-in default; whatever validation says of it is noise.
        if !removed_keys.iter().any(|r| is_under(&problem.key, r)) {
            problems.push(problem);
        }
    }
    Some(config)
}

/// Splits a dotted key path (`a.b[2].c`) into steps; the inverse of [`display_path`].
fn parse_path(key: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        let (name, mut indices) = match part.find('[') {
            Some(at) => part.split_at(at),
            None => (part, ""),
        };
        steps.push(Step::Key(name.to_owned()));
        while let Some(rest) = indices.strip_prefix('[') {
            let Some((number, after)) = rest.split_once(']') else {
                break;
            };
            match number.parse() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => break,
            }
            indices = after;
        }
    }
    steps
}

/// Removes the value at `steps` from `tree`; false if there is nothing there to remove.
fn remove(tree: &mut Value, steps: &[Step]) -> bool {
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut node = tree;
    for step in parents {
        let next = match (node, step) {
            (Value::Table(t), Step::Key(k)) => t.get_mut(k),
            (Value::Array(a), Step::Index(i)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    match (node, last) {
        (Value::Table(t), Step::Key(k)) => t.remove(k).is_some(),
        (Value::Array(a), Step::Index(i)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}
