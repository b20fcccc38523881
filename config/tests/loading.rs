//! Loading scenarios: defaults, key-path errors, environment overrides, shipped files.

use std::net::SocketAddr;
use std::time::Duration;

use tributary_config::{
    default_config_toml, AclAction, Config, ConfigError, ConfigProblem, MqueueOverflow, Permission,
    SharedStrategy,
};

fn problems(text: &str) -> Vec<ConfigProblem> {
    problems_with_env(text, &[])
}

fn problems_with_env(text: &str, env: &[(&str, &str)]) -> Vec<ConfigProblem> {
    match Config::from_toml_str_with_env(text, env_vars(env)) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(err @ ConfigError::Io { .. }) => panic!("unexpected {err}"),
        Err(ConfigError::Invalid(problems)) => problems,
    }
}

fn env_vars(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn keys(problems: &[ConfigProblem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

fn parse(text: &str) -> Config {
    Config::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_with_env(text: &str, env: &[(&str, &str)]) -> Config {
    Config::from_toml_str_with_env(text, env_vars(env)).unwrap_or_else(|e| panic!("{e}"))
}

// --- defaults and shipped files ---------------------------------------------

#[test]
fn default_toml_parses_to_default() {
    assert_eq!(parse(default_config_toml()), Config::default());
}

#[test]
fn shipped_tributary_toml_parses_to_default() {
    assert_eq!(parse(include_str!("../tributary.toml")), Config::default());
}

#[test]
fn empty_file_is_default() {
    assert_eq!(parse(""), Config::default());
}

#[test]
fn documented_defaults() {
    let c = Config::default();
    assert_eq!(c.node.name, "tributary@127.0.0.1");
    assert_eq!(c.node.sys_interval, Duration::from_secs(60));
    assert_eq!(c.log.level, "info");
    assert_eq!(c.mqtt.max_packet_size, 1_048_576);
    assert_eq!(c.mqtt.max_session_expiry, Duration::from_secs(7200));
    assert_eq!(c.mqtt.server_keep_alive, None);
    assert_eq!(c.mqtt.mqueue_overflow, MqueueOverflow::DropOldest);
    assert_eq!(
        c.mqtt.shared_subscription_strategy,
        SharedStrategy::RoundRobin
    );
    let default = &c.listeners.tcp["default"];
    assert_eq!(
        default.bind,
        "0.0.0.0:1883".parse::<SocketAddr>().expect("addr")
    );
    assert!(default.enabled && default.tcp_nodelay);
    assert_eq!(c.listeners.tcp.len(), 1);
    assert_eq!(c.limits.max_connections, 1_024_000);
    assert_eq!(c.authentication.allow_anonymous, None);
    assert!(c.authentication.anonymous_allowed());
}

/// Every key of the default config appears, uncommented, in default.toml (and
/// the one optional key appears commented), so the file documents everything.
#[test]
fn default_toml_lists_every_key() {
    fn leaves(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&key, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    fn lookup<'a>(value: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
        key.split('.').try_fold(value, |v, k| v.get(k))
    }
    let expected = toml::Value::try_from(Config::default()).expect("serialize");
    let written: toml::Value = toml::from_str(default_config_toml()).expect("parse");
    let mut all = Vec::new();
    leaves("", &expected, &mut all);
    assert!(all.len() > 30, "{all:?}");
    for key in &all {
        assert!(
            lookup(&written, key).is_some(),
            "default.toml lacks `{key}`"
        );
    }
    assert!(default_config_toml().contains("# server_keep_alive = "));
}

#[test]
fn serialized_default_round_trips() {
    let text = toml::to_string(&Config::default()).expect("serialize");
    assert_eq!(parse(&text), Config::default());
    assert!(text.contains("max_session_expiry = \"2h\""), "{text}");
}

#[test]
fn paho_conformance_config() {
    let c = parse(include_str!("../paho-conformance.toml"));
    assert_eq!(c.mqtt.server_keep_alive, None);
    assert_eq!(c.mqtt.max_keep_alive, Some(60));
    assert_eq!(c.mqtt.receive_maximum, 32);
    assert_eq!(
        c.authorization.subscribe_denied_reason,
        tributary_config::SubscribeDeniedReason::Unspecified
    );
    assert_eq!(c.authorization.no_match, Permission::Allow);
    let [rule] = c.authorization.rules.as_slice() else {
        panic!("{:?}", c.authorization.rules)
    };
    assert_eq!(rule.permission, Permission::Deny);
    assert_eq!(rule.action, AclAction::Subscribe);
    assert_eq!(rule.topics, ["test/nosubscribe"]);
    assert_eq!(c.listeners.tcp["default"].bind.to_string(), "0.0.0.0:1883");
}

// --- values -----------------------------------------------------------------

#[test]
fn partial_sections_keep_other_defaults() {
    let c = parse(
        r#"
        [mqtt]
        max_inflight = 64
        mqueue_overflow = "drop_newest"
        shared_subscription_strategy = "hash_clientid"
        connect_timeout = "500ms"
        retry_interval = 5
        [node]
        sys_interval = "0s"
        "#,
    );
    assert_eq!(c.mqtt.max_inflight, 64);
    assert_eq!(c.mqtt.receive_maximum, 32);
    assert_eq!(c.mqtt.mqueue_overflow, MqueueOverflow::DropNewest);
    assert_eq!(
        c.mqtt.shared_subscription_strategy,
        SharedStrategy::HashClientid
    );
    assert_eq!(c.mqtt.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.mqtt.retry_interval, Duration::from_secs(5));
    assert_eq!(c.node.sys_interval, Duration::ZERO);
    assert_eq!(c.node.name, "tributary@127.0.0.1");
}

#[test]
fn bind_accepts_bare_port_and_ipv6() {
    let c = parse(
        r#"
        [listeners.tcp.a]
        bind = "1884"
        [listeners.tcp.b]
        bind = 1885
        [listeners.tcp.c]
        bind = "[::1]:1886"
        [listeners.tcp.d]
        bind = "127.0.0.1:0"
        [listeners.tcp.e]
        bind = "127.0.0.1:0"
        "#,
    );
    let bind = |name: &str| c.listeners.tcp[name].bind.to_string();
    assert_eq!(bind("a"), "0.0.0.0:1884");
    assert_eq!(bind("b"), "0.0.0.0:1885");
    assert_eq!(bind("c"), "[::1]:1886");
    assert!(
        !c.listeners.tcp.contains_key("default"),
        "a file's listeners replace the default set"
    );
}

#[test]
fn bad_bind_names_its_key() {
    let p = problems("[listeners.tcp.default]\nbind = \"localhost:1883\"\n");
    assert_eq!(keys(&p), ["listeners.tcp.default.bind"]);
    assert!(
        p[0].message
            .contains("invalid listen address `localhost:1883`"),
        "{}",
        p[0]
    );
    let p = problems("[listeners.tcp.x]\nbind = 70000\n");
    assert_eq!(keys(&p), ["listeners.tcp.x.bind"]);
}

#[test]
fn acl_rules() {
    let c = parse(
        r#"
        [authorization]
        no_match = "deny"
        deny_action = "disconnect"
        [[authorization.rules]]
        permission = "allow"
        action = "all"
        topics = ["sensors/+/temp", "$SYS/#"]
        username = "u"
        ipaddr = "10.0.0.0/8"
        "#,
    );
    assert_eq!(c.authorization.no_match, Permission::Deny);
    assert_eq!(c.authorization.rules[0].action, AclAction::All);
    assert_eq!(c.authorization.rules[0].username.as_deref(), Some("u"));
    assert_eq!(c.authorization.rules[0].clientid, None);
}

// --- errors with key paths --------------------------------------------------

#[test]
fn unknown_key_names_its_path() {
    let p = problems("[mqtt]\nmax_pakcet_size = 1\n");
    assert_eq!(keys(&p), ["mqtt.max_pakcet_size"]);
    assert!(
        p[0].message.starts_with("unknown field `max_pakcet_size`"),
        "{}",
        p[0]
    );
    assert!(
        p[0].message.contains("max_packet_size"),
        "lists the valid keys: {}",
        p[0]
    );

    let p = problems("[mqttt]\n");
    assert_eq!(keys(&p), ["mqttt"]);
    let p = problems("[listeners.tcp.default]\nport = 1\n");
    assert_eq!(keys(&p), ["listeners.tcp.default.port"]);
}

#[test]
fn wrong_type_names_its_path() {
    let p = problems("[mqtt]\nmax_packet_size = \"big\"\n");
    assert_eq!(keys(&p), ["mqtt.max_packet_size"]);
    assert!(
        p[0].message.contains("invalid type: string \"big\""),
        "{}",
        p[0]
    );

    let p = problems("[mqtt]\nmax_inflight = -1\nretain_available = \"yes\"\n");
    assert_eq!(keys(&p), ["mqtt.max_inflight", "mqtt.retain_available"]);

    let p = problems("[mqtt]\nmqueue_overflow = \"drop_all\"\n");
    assert_eq!(keys(&p), ["mqtt.mqueue_overflow"]);
    assert!(p[0].message.contains("drop_oldest"), "{}", p[0]);
}

#[test]
fn bad_duration_names_its_key() {
    let p = problems("[mqtt]\nconnect_timeout = \"10 seconds\"\n[node]\nsys_interval = -5\n");
    assert_eq!(keys(&p), ["mqtt.connect_timeout", "node.sys_interval"]);
    assert!(p[1].message.contains("must not be negative"), "{}", p[1]);
    assert_eq!(
        p[0].to_string(),
        "mqtt.connect_timeout: invalid duration `10 seconds`: unknown unit `seconds` (expected ns, us, ms, s, m, h or d)"
    );
}

#[test]
fn every_structural_error_is_reported() {
    let p = problems(
        r#"
        bogus = 1
        [mqtt]
        max_pakcet_size = 1
        max_inflight = "x"
        [listeners.tcp.default]
        bind = "nowhere"
        [[authorization.rules]]
        permission = "deny"
        action = "subscribe"
        topic = ["a"]
        [[authorization.rules]]
        permission = "maybe"
        action = "publish"
        topics = ["b"]
        [[authorization.rules]]
        permission = "allow"
        action = "publish"
        topics = ["c/#/d"]
        "#,
    );
    let mut k = keys(&p);
    k.sort_unstable();
    assert_eq!(
        k,
        [
            "authorization.rules[0]",
            "authorization.rules[0].topic",
            "authorization.rules[1].permission",
            "authorization.rules[2].topics[0]",
            "bogus",
            "listeners.tcp.default.bind",
            "mqtt.max_inflight",
            "mqtt.max_pakcet_size",
        ],
        "{p:#?}"
    );
    // The missing `topics` is real; the missing `permission` of rules[1] (removed
    // because its value was bad) is not reported twice.
    assert!(p
        .iter()
        .any(|p| p.to_string() == "authorization.rules[0]: missing field `topics`"));
    assert!(
        !p.iter()
            .any(|p| p.message.contains("missing field `permission`")),
        "{p:#?}"
    );
}

#[test]
fn missing_required_rule_field_is_reported() {
    let p = problems("[[authorization.rules]]\npermission = \"deny\"\ntopics = [\"a\"]\n");
    assert_eq!(keys(&p), ["authorization.rules[0]"]);
    assert!(p[0].message.contains("missing field `action`"), "{}", p[0]);
}

#[test]
fn every_semantic_error_is_reported() {
    let err = Config::from_toml_str(
        r#"
        [node]
        name = "a/b"
        [log]
        level = ""
        [mqtt]
        max_packet_size = 1
        max_clientid_len = 22
        max_topic_levels = 0
        max_qos_allowed = 3
        receive_maximum = 0
        max_inflight = 0
        max_awaiting_rel = 0
        keepalive_multiplier = 0.5
        connect_timeout = "0s"
        retry_interval = 0
        await_rel_timeout = "0ms"
        max_session_expiry = "50000d"
        [listeners.tcp.a]
        bind = "1883"
        [listeners.tcp.b]
        bind = "127.0.0.1:1883"
        max_connections = 0
        [[authorization.rules]]
        permission = "deny"
        action = "all"
        topics = []
        ipaddr = "10.0.0.0/40"
        clientid = ""
        [limits]
        max_connections = 0
        "#,
    )
    .expect_err("invalid");
    let p = err.problems();
    let expected = [
        "node.name",
        "log.level",
        "mqtt.max_packet_size",
        "mqtt.max_clientid_len",
        "mqtt.max_topic_levels",
        "mqtt.max_qos_allowed",
        "mqtt.receive_maximum",
        "mqtt.max_inflight",
        "mqtt.max_awaiting_rel",
        "mqtt.await_rel_timeout",
        "mqtt.keepalive_multiplier",
        "mqtt.max_session_expiry",
        "mqtt.connect_timeout",
        "mqtt.retry_interval",
        "listeners.tcp.b.max_connections",
        "listeners.tcp.b.bind",
        "authorization.rules[0].topics",
        "authorization.rules[0].clientid",
        "authorization.rules[0].ipaddr",
        "limits.max_connections",
    ];
    assert_eq!(keys(p), expected, "{p:#?}");
    let text = err.to_string();
    assert_eq!(text.lines().count(), expected.len());
    assert!(
        text.contains("mqtt.max_packet_size: must be between 2 and 268435460, got 1"),
        "{text}"
    );
    assert!(
        text.contains("mqtt.max_clientid_len: must be at least 23, got 22"),
        "{text}"
    );
    assert!(
        text.contains("collides with listeners.tcp.a.bind = 0.0.0.0:1883"),
        "{text}"
    );
}

#[test]
fn type_and_semantic_errors_are_reported_together() {
    let p = problems("[mqtt]\nmax_inflight = \"many\"\nreceive_maximum = 0\n");
    assert_eq!(keys(&p), ["mqtt.max_inflight", "mqtt.receive_maximum"]);
}

#[test]
fn syntax_error_names_line_and_column() {
    let p = problems("[mqtt]\nmax_inflight = = 3\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].key.starts_with("line 2, column"), "{}", p[0]);
    assert!(p[0].message.starts_with("invalid TOML"), "{}", p[0]);
}

#[test]
fn missing_file_is_io_error() {
    let err =
        Config::load(std::path::Path::new("/nonexistent/tributary.toml")).expect_err("missing");
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/tributary.toml: "),
        "{err}"
    );
}

#[test]
fn load_reads_a_file() {
    let path =
        std::env::temp_dir().join(format!("tributary-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, "[mqtt]\nmax_inflight = 7\n").expect("write");
    let loaded = Config::load(&path);
    std::fs::remove_file(&path).expect("remove");
    assert_eq!(loaded.expect("valid").mqtt.max_inflight, 7);
}

// --- environment overrides --------------------------------------------------

#[test]
fn env_overrides_scalars_nested_keys_and_bools() {
    let c = parse_with_env(
        "[mqtt]\nmax_packet_size = 4096\n",
        &[
            ("TRIBUTARY_MQTT__MAX_PACKET_SIZE", "2048"),
            ("TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND", "0.0.0.0:11883"),
            ("TRIBUTARY_MQTT__RETAIN_AVAILABLE", "false"),
            ("TRIBUTARY_MQTT__KEEPALIVE_MULTIPLIER", "2.5"),
            ("TRIBUTARY_MQTT__SERVER_KEEP_ALIVE", "30"),
            ("TRIBUTARY_MQTT__CONNECT_TIMEOUT", "3"),
            ("TRIBUTARY_MQTT__MQUEUE_OVERFLOW", "drop_newest"),
            ("TRIBUTARY_NODE__NAME", "123"),
            ("TRIBUTARY_LOG__LEVEL", "debug"),
            ("PATH", "/usr/bin"),
            ("NOT_TRIBUTARY_MQTT__X", "x"),
        ],
    );
    assert_eq!(c.mqtt.max_packet_size, 2048);
    let default = &c.listeners.tcp["default"];
    assert_eq!(default.bind.to_string(), "0.0.0.0:11883");
    assert!(default.enabled, "other listener keys keep their defaults");
    assert!(!c.mqtt.retain_available);
    assert_eq!(c.mqtt.keepalive_multiplier, 2.5);
    assert_eq!(c.mqtt.server_keep_alive, Some(30));
    assert_eq!(c.mqtt.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.mqtt.mqueue_overflow, MqueueOverflow::DropNewest);
    assert_eq!(c.node.name, "123", "string-typed keys take the raw text");
    assert_eq!(c.log.level, "debug");
}

#[test]
fn env_added_listener_keeps_the_default_one() {
    let c = parse_with_env("", &[("TRIBUTARY_LISTENERS__TCP__EXTRA__BIND", "1884")]);
    assert_eq!(c.listeners.tcp.len(), 2);
    assert_eq!(c.listeners.tcp["extra"].bind.to_string(), "0.0.0.0:1884");
    assert_eq!(c.listeners.tcp["default"].bind.to_string(), "0.0.0.0:1883");
}

#[test]
fn env_indexes_arrays_and_accepts_toml_arrays() {
    let c = parse_with_env(
        include_str!("../paho-conformance.toml"),
        &[
            ("TRIBUTARY_AUTHORIZATION__RULES__0__PERMISSION", "allow"),
            (
                "TRIBUTARY_AUTHORIZATION__RULES__0__TOPICS",
                r#"["a/#", "b"]"#,
            ),
        ],
    );
    assert_eq!(c.authorization.rules[0].permission, Permission::Allow);
    assert_eq!(c.authorization.rules[0].topics, ["a/#", "b"]);
}

#[test]
fn bad_env_override_names_the_variable() {
    let p = problems_with_env(
        "",
        &[
            ("TRIBUTARY_MQTT__MAX_PACKET_SIZE", "huge"),
            ("TRIBUTARY_MQTT__MAX_INFLIGHT", "0"),
            ("TRIBUTARY_MQTT__NO_SUCH_KEY", "1"),
            ("TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND", "nowhere:1"),
        ],
    );
    let text: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(p.len(), 4, "{text:#?}");
    for (key, var) in [
        ("mqtt.max_packet_size", "TRIBUTARY_MQTT__MAX_PACKET_SIZE"),
        ("mqtt.max_inflight", "TRIBUTARY_MQTT__MAX_INFLIGHT"),
        ("mqtt.no_such_key", "TRIBUTARY_MQTT__NO_SUCH_KEY"),
        (
            "listeners.tcp.default.bind",
            "TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND",
        ),
    ] {
        let problem = p
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{key}: {text:#?}"));
        assert!(
            problem
                .message
                .ends_with(&format!("(set by environment variable {var})")),
            "{problem}"
        );
    }
}

#[test]
fn malformed_env_variable_is_reported_by_name() {
    let p = problems_with_env(
        "",
        &[
            ("TRIBUTARY_MQTT____X", "1"),
            ("TRIBUTARY_NODE__NAME__FIRST", "x"),
            ("TRIBUTARY_AUTHORIZATION__RULES__3__PERMISSION", "deny"),
        ],
    );
    assert_eq!(
        keys(&p),
        [
            "TRIBUTARY_AUTHORIZATION__RULES__3__PERMISSION",
            "TRIBUTARY_MQTT____X",
            "TRIBUTARY_NODE__NAME__FIRST",
        ],
        "{p:#?}"
    );
    assert!(
        p[2].message.contains("`node.name` is not a table"),
        "{}",
        p[2]
    );
}

#[test]
fn unknown_tributary_variables_are_errors() {
    let problems = problems_with_env(
        "",
        &[
            ("TRIBUTARY_BIN", "/usr/bin/tributary"),
            ("TRIBUTARY__MQTT__MAX_INFLIGHT", "8"),
            ("TRIBUTARY_MQTT__NO_SUCH_KEY", "1"),
            ("TRIBUTARY_NOSECTION__KEY", "1"),
        ],
    );
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let find = |var: &str| {
        text.iter()
            .find(|t| t.contains(var))
            .unwrap_or_else(|| panic!("no problem names {var}: {text:#?}"))
            .clone()
    };
    assert!(find("TRIBUTARY_BIN").contains("not a configuration key"));
    assert!(find("TRIBUTARY__MQTT__MAX_INFLIGHT").contains("one underscore"));
    let unknown = find("TRIBUTARY_MQTT__NO_SUCH_KEY");
    assert!(unknown.starts_with("mqtt.no_such_key"), "{unknown}");
    let section = find("TRIBUTARY_NOSECTION__KEY");
    assert!(section.starts_with("nosection"), "{section}");
    assert_eq!(problems.len(), 4, "{text:#?}");
}
