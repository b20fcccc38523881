//! A topic-level trie used two ways: keyed by *filters* and matched against
//! a concrete topic (the subscription table), or keyed by *topic names* and
//! matched against a filter (the retained store).
//!
//! Each node owns its children by level string and at most one value.
//! Empty nodes are pruned on removal, so the trie's size tracks what it
//! holds. Both walks apply the `$`-topic rule [MQTT-4.7.2-1]: a wildcard in
//! the first level never matches a level starting with `$`.

use std::collections::HashMap;

/// A trie from `/`-separated keys to values.
#[derive(Debug)]
pub struct Trie<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> Trie<V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys holding a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key holds a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in key.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// The value at `key`, inserting `make()` first when absent.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let mut node = &mut self.root;
        for level in key.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.value.is_none() {
            self.len += 1;
        }
        node.value.get_or_insert_with(make)
    }

    /// Set the value at `key`, returning the previous one.
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in key.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Remove the value at `key`, pruning empty nodes.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let mut removed = None;
        self.update(key, |slot| removed = slot.take());
        removed
    }

    /// Run `f` on the value slot at `key` (if the path exists); if the slot
    /// is left empty the path is pruned. Returns false when the path does
    /// not exist.
    pub fn update(&mut self, key: &str, f: impl FnOnce(&mut Option<V>)) -> bool {
        fn go<V>(
            node: &mut Node<V>,
            mut levels: std::str::Split<'_, char>,
            f: impl FnOnce(&mut Option<V>),
            len: &mut usize,
        ) -> bool {
            match levels.next() {
                None => {
                    let had = node.value.is_some();
                    f(&mut node.value);
                    match (had, node.value.is_some()) {
                        (true, false) => *len -= 1,
                        (false, true) => *len += 1,
                        _ => {}
                    }
                    true
                }
                Some(level) => {
                    let Some(child) = node.children.get_mut(level) else {
                        return false;
                    };
                    let found = go(child, levels, f, len);
                    if child.value.is_none() && child.children.is_empty() {
                        node.children.remove(level);
                    }
                    found
                }
            }
        }
        go(&mut self.root, key.split('/'), f, &mut self.len)
    }

    /// Visit every value whose key is a *filter* matching the topic name
    /// `topic`.
    pub fn for_each_filter_matching<'a>(&'a self, topic: &str, f: &mut impl FnMut(&'a V)) {
        let dollar = topic.starts_with('$');
        walk_filters(&self.root, topic.split('/'), true, dollar, f);
    }

    /// Visit every value whose key is a *topic name* matched by `filter`,
    /// with its key.
    pub fn for_each_topic_matched_by<'a>(&'a self, filter: &str, f: &mut impl FnMut(&'a V)) {
        walk_topics(&self.root, filter.split('/'), true, f);
    }

    /// Visit every value.
    pub fn for_each<'a>(&'a self, f: &mut impl FnMut(&'a V)) {
        visit_all(&self.root, false, f);
    }
}

fn walk_filters<'a, V>(
    node: &'a Node<V>,
    mut levels: std::str::Split<'_, char>,
    first: bool,
    dollar: bool,
    f: &mut impl FnMut(&'a V),
) {
    let wildcards_allowed = !(first && dollar);
    match levels.next() {
        None => {
            if let Some(v) = &node.value {
                f(v);
            }
            // "a/#" also matches "a" [MQTT-4.7.1-2].
            if let Some(v) = node.children.get("#").and_then(|n| n.value.as_ref()) {
                f(v);
            }
        }
        Some(level) => {
            if wildcards_allowed {
                if let Some(v) = node.children.get("#").and_then(|n| n.value.as_ref()) {
                    f(v);
                }
                if let Some(plus) = node.children.get("+") {
                    walk_filters(plus, levels.clone(), false, dollar, f);
                }
            }
            if level != "+" && level != "#" {
                if let Some(child) = node.children.get(level) {
                    walk_filters(child, levels, false, dollar, f);
                }
            }
        }
    }
}

fn walk_topics<'a, V>(
    node: &'a Node<V>,
    mut levels: std::str::Split<'_, char>,
    first: bool,
    f: &mut impl FnMut(&'a V),
) {
    match levels.next() {
        None => {
            if let Some(v) = &node.value {
                f(v);
            }
        }
        Some("#") => {
            if let Some(v) = &node.value {
                if !first {
                    f(v);
                }
            }
            visit_all_children(node, first, f);
        }
        Some("+") => {
            for (name, child) in &node.children {
                if first && name.starts_with('$') {
                    continue;
                }
                walk_topics(child, levels.clone(), false, f);
            }
        }
        Some(level) => {
            if let Some(child) = node.children.get(level) {
                walk_topics(child, levels, false, f);
            }
        }
    }
}

fn visit_all_children<'a, V>(node: &'a Node<V>, skip_dollar: bool, f: &mut impl FnMut(&'a V)) {
    for (name, child) in &node.children {
        if skip_dollar && name.starts_with('$') {
            continue;
        }
        visit_all(child, false, f);
    }
}

fn visit_all<'a, V>(node: &'a Node<V>, skip_dollar: bool, f: &mut impl FnMut(&'a V)) {
    if let Some(v) = &node.value {
        f(v);
    }
    visit_all_children(node, skip_dollar, f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use proptest::prelude::*;

    fn filters_matching(trie: &Trie<String>, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        trie.for_each_filter_matching(topic, &mut |v: &String| out.push(v.clone()));
        out.sort();
        out
    }

    fn topics_matched(trie: &Trie<String>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        trie.for_each_topic_matched_by(filter, &mut |v: &String| out.push(v.clone()));
        out.sort();
        out
    }

    #[test]
    fn insert_remove_prunes() {
        let mut t = Trie::new();
        t.insert("a/b/c", 1);
        t.insert("a/b", 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove("a/b/c"), Some(1));
        assert_eq!(t.get("a/b"), Some(&2));
        assert_eq!(t.remove("a/b"), Some(2));
        assert!(t.is_empty());
        assert!(t.root.children.is_empty());
        assert_eq!(t.remove("x"), None);
    }

    #[test]
    fn dollar_rule_both_ways() {
        let mut filters = Trie::new();
        for f in ["#", "+/x", "$SYS/#", "$SYS/+"] {
            filters.insert(f, f.to_string());
        }
        assert_eq!(
            filters_matching(&filters, "$SYS/x"),
            vec!["$SYS/#", "$SYS/+"]
        );
        let mut topics = Trie::new();
        for t in ["$SYS/x", "a/x", "a"] {
            topics.insert(t, t.to_string());
        }
        assert_eq!(topics_matched(&topics, "#"), vec!["a", "a/x"]);
        assert_eq!(topics_matched(&topics, "+/x"), vec!["a/x"]);
        assert_eq!(topics_matched(&topics, "$SYS/#"), vec!["$SYS/x"]);
        assert_eq!(topics_matched(&topics, "a/#"), vec!["a", "a/x"]);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$s".to_string())
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#".into());
                }
                v.join("/")
            })
    }

    proptest! {
        #[test]
        fn filter_trie_agrees_with_oracle(filters in prop::collection::vec(filter(), 0..30), topics in prop::collection::vec(topic(), 1..10)) {
            let mut trie = Trie::new();
            for f in &filters {
                trie.insert(f, f.clone());
            }
            for t in &topics {
                let mut expected: Vec<String> = filters.iter().filter(|f| matches(t, f)).cloned().collect();
                expected.sort();
                expected.dedup();
                prop_assert_eq!(filters_matching(&trie, t), expected);
            }
        }

        #[test]
        fn topic_trie_agrees_with_oracle(topics in prop::collection::vec(topic(), 0..30), filters in prop::collection::vec(filter(), 1..10)) {
            let mut trie = Trie::new();
            for t in &topics {
                trie.insert(t, t.clone());
            }
            for f in &filters {
                let mut expected: Vec<String> = topics.iter().filter(|t| matches(t, f)).cloned().collect();
                expected.sort();
                expected.dedup();
                prop_assert_eq!(topics_matched(&trie, f), expected);
            }
        }

        #[test]
        fn removal_restores_emptiness(keys in prop::collection::vec(filter(), 0..20)) {
            let mut trie = Trie::new();
            for k in &keys {
                trie.insert(k, ());
            }
            for k in &keys {
                trie.remove(k);
            }
            prop_assert!(trie.is_empty());
            prop_assert!(trie.root.children.is_empty());
        }
    }
}
