//! Reading one variable of the table at a time: each bad value becomes a [`Problem`] and the
//! reader goes on with the default or the feature's off switch, so every problem is reported.

use super::variables::Var;
use super::{redact, Problem, PREFIX};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

pub(super) struct Reader<'a> {
    vars: HashMap<&'a str, &'a str>,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(vars: &'a [(String, String)]) -> Self {
        Reader {
            vars: vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            problems: Vec::new(),
        }
    }

    pub(super) fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    /// A variable Lambda sets (`AWS_*`): outside the table, and never a problem.
    pub(super) fn lambda_var(&self, name: &str) -> Option<&'a str> {
        self.vars.get(name).copied()
    }

    pub(super) fn get(&self, var: Var) -> Option<&'a str> {
        self.vars.get(var.name()).copied()
    }

    /// Records a bad variable. Every text is masked ([`redact`]): a rejected URL may carry
    /// the very credentials it was rejected for, and the value is quoted in the messages too.
    pub(super) fn problem(&mut self, variable: &str, value: &str, expected: &str, effect: &str) {
        self.problems.push(Problem {
            variable: variable.to_owned(),
            value: redact(value),
            expected: redact(expected),
            effect: redact(effect),
        });
    }

    /// Reports every `EGRESS_WARDEN_*` variable that is not in the table (a typo would
    /// otherwise silently leave the default in place), in name order.
    pub(super) fn report_unknown(&mut self) {
        let unknown: BTreeMap<&'a str, &'a str> = self
            .vars
            .iter()
            .filter(|(name, _)| name.starts_with(PREFIX) && !Var::is_known(name))
            .map(|(&name, &value)| (name, value))
            .collect();
        for (name, value) in unknown {
            self.problem(
                name,
                value,
                "one of the variables documented in the README",
                "it is ignored",
            );
        }
    }

    pub(super) fn bool(&mut self, var: Var, default: bool) -> bool {
        let Some(value) = self.get(var) else {
            return default;
        };
        // Exactly `true`/`false` (any case): the exec wrapper reads EGRESS_WARDEN_DISABLE the
        // same way, so the two can never disagree on whether the proxy is there.
        match value.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" | "" => false,
            _ => {
                let effect = format!("using the default ({default})");
                self.problem(var.name(), value, "true or false", &effect);
                default
            }
        }
    }

    /// One of a few words (any case); empty means the default. On any other value, `effect`
    /// says what happens instead (the default is used).
    pub(super) fn keyword<T: Copy>(
        &mut self,
        var: Var,
        default: T,
        words: &[(&str, T)],
        expected: &str,
        effect: &str,
    ) -> T {
        let Some(value) = self.get(var) else {
            return default;
        };
        let word = value.trim().to_ascii_lowercase();
        if word.is_empty() {
            return default;
        }
        match words.iter().find(|(known, _)| *known == word) {
            Some(&(_, chosen)) => chosen,
            None => {
                self.problem(var.name(), value, expected, effect);
                default
            }
        }
    }

    /// A number in `range`; unset or bad: `None` (a bad value is reported with `effect`).
    pub(super) fn optional_number<T>(
        &mut self,
        var: Var,
        range: RangeInclusive<T>,
        effect: &str,
    ) -> Option<T>
    where
        T: FromStr + PartialOrd + Display,
    {
        let value = self.get(var)?;
        match value.trim().parse::<T>() {
            Ok(n) if range.contains(&n) => Some(n),
            _ => {
                let expected = format!("a whole number from {} to {}", range.start(), range.end());
                self.problem(var.name(), value, &expected, effect);
                None
            }
        }
    }

    /// A number in `range`; unset or bad: `default` (a bad value is reported with `effect`).
    pub(super) fn number<T>(
        &mut self,
        var: Var,
        default: T,
        range: RangeInclusive<T>,
        effect: &str,
    ) -> T
    where
        T: FromStr + PartialOrd + Display,
    {
        self.optional_number(var, range, effect).unwrap_or(default)
    }

    /// A listener port; a bad value switches the listener off (0) rather than guess one.
    pub(super) fn port(&mut self, var: Var, default: u16, feature: &str) -> u16 {
        let Some(value) = self.get(var) else {
            return default;
        };
        match value.trim().parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                let effect = format!("the {feature} is disabled");
                self.problem(
                    var.name(),
                    value,
                    "a port number from 0 to 65535 (0 disables)",
                    &effect,
                );
                0
            }
        }
    }

    /// Splits a comma list, parses each item and reports each bad item on its own (the
    /// good ones are kept).
    pub(super) fn list<T>(
        &mut self,
        var: Var,
        default: &str,
        expected: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let value = self.get(var).unwrap_or(default);
        let mut items = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match parse(item) {
                Ok(parsed) => items.push(parsed),
                Err(why) => {
                    let expected = format!("{expected} ({why})");
                    let effect = format!("the entry {item:?} is ignored");
                    self.problem(var.name(), item, &expected, &effect);
                }
            }
        }
        items
    }
}
