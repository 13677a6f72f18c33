//! Table tests of the filter language: one row per operator and error, over Consul-shaped JSON.

use serde_json::{Value, json};

use super::expr::Filter;
use super::schema::{AGENT_SERVICE, CHECK_SERVICE_NODE, HEALTH_CHECK, NODE, SERVICE_NODE};

fn entry(name: &str, tags: &[&str], status: &str, meta: Value) -> Value {
    json!({
        "Node": {"Node": format!("n-{name}"), "Address": "10.0.0.1", "Meta": meta},
        "Service": {"ID": name, "Service": name, "Tags": tags, "Port": 80,
                    "Meta": {"version": "2"}, "EnableTagOverride": false},
        "Checks": [
            {"Node": format!("n-{name}"), "CheckID": "serfHealth", "Status": "passing"},
            {"Node": format!("n-{name}"), "CheckID": "c", "Status": status, "ServiceID": name},
        ],
    })
}

fn names(expr: &str) -> Vec<String> {
    let rows = [
        entry("web", &["primary", "v1"], "passing", json!({"rack": "r1"})),
        entry("db", &["replica"], "critical", json!({})),
        entry("cache", &[], "warning", json!({"rack": "r2", "env": ""})),
    ];
    let filter = Filter::new(expr, CHECK_SERVICE_NODE).unwrap_or_else(|e| panic!("{expr}: {e}"));
    rows.iter()
        .filter(|r| filter.matches(r, CHECK_SERVICE_NODE))
        .map(|r| r["Service"]["ID"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn operators() {
    let table: &[(&str, &[&str])] = &[
        ("Service.Service == web", &["web"]),
        ("Service.Service == \"web\"", &["web"]),
        ("Service.Service == `web`", &["web"]),
        ("Service.Service != web", &["db", "cache"]),
        ("Service.Tags contains primary", &["web"]),
        ("primary in Service.Tags", &["web"]),
        ("\"replica\" in Service.Tags", &["db"]),
        ("Service.Tags not contains primary", &["db", "cache"]),
        ("primary not in Service.Tags", &["db", "cache"]),
        ("Service.Tags is empty", &["cache"]),
        ("Service.Tags is not empty", &["web", "db"]),
        ("Service.Service matches \"^(web|db)$\"", &["web", "db"]),
        ("Service.Service not matches \"^w\"", &["db", "cache"]),
        ("eb in Service.Service", &["web"]),
        ("Service.Service contains ach", &["cache"]),
        ("Checks.Status == critical", &["db"]),
        ("Checks.Status != passing", &["db", "cache"]),
        ("Node.Meta.rack == r1", &["web"]),
        ("Node.Meta[\"rack\"] == r2", &["cache"]),
        ("Node.Meta.rack != r1", &["db", "cache"]),
        // a missing key: `==` is false, `!=` true
        ("Node.Meta.rack == \"\"", &[]),
        ("Node.Meta.env == \"\"", &["cache"]),
        ("Node.Meta is empty", &["db"]),
        ("rack in Node.Meta", &["web", "cache"]),
        ("Service.Meta.version == \"2\"", &["web", "db", "cache"]),
        ("Service.Port == 80", &["web", "db", "cache"]),
        ("Service.Port != 80", &[]),
        ("Service.Port == \"0x50\"", &["web", "db", "cache"]),
        (
            "Service.EnableTagOverride == false",
            &["web", "db", "cache"],
        ),
        ("Service.Address == \"\"", &["web", "db", "cache"]),
        ("not Service.Service == web", &["db", "cache"]),
        ("not not Service.Service == web", &["web"]),
        (
            "Service.Service == web or Service.Service == db",
            &["web", "db"],
        ),
        (
            "Service.Service == web and Service.Tags contains v1",
            &["web"],
        ),
        (
            "Service.Service == web and Service.Tags contains replica",
            &[],
        ),
        // `and` binds tighter than `or`
        (
            "Service.Service == cache or Service.Service == web and Checks.Status == critical",
            &["cache"],
        ),
        (
            "(Service.Service == cache or Service.Service == web) and Node.Meta.rack == r1",
            &["web"],
        ),
        ("  ( Service.Service==web )  ", &["web"]),
        (
            "not (Service.Service == web or Service.Service == db)",
            &["cache"],
        ),
    ];
    for (expr, want) in table {
        assert_eq!(names(expr), *want, "{expr}");
    }
}

#[test]
fn errors_have_consuls_texts() {
    let prefix = "Failed to create boolean expression evaluator: ";
    let table: &[(&str, &str)] = &[
        (
            "Service.Nope == x",
            "Selector \"Service.Nope\" is not valid",
        ),
        ("Foo == x", "Selector \"Foo\" is not valid"),
        (
            "Service.Port.X == 1",
            "Selector \"Service.Port.X\" is not valid",
        ),
        (
            "Service.Tags == x",
            "Invalid match operator \"Equal\" for selector \"Service.Tags\"",
        ),
        (
            "Service.Service is empty",
            "Invalid match operator \"Is Empty\" for selector \"Service.Service\"",
        ),
        (
            "Service == x",
            "Invalid match operator \"Equal\" for selector \"Service\"",
        ),
        (
            "Service.Port == eighty",
            "Failed to coerce value \"eighty\" for selector \"Service.Port\": strconv.ParseInt: parsing \"eighty\": invalid syntax",
        ),
        (
            "Service.EnableTagOverride == yes",
            "Failed to coerce value \"yes\" for selector \"Service.EnableTagOverride\": strconv.ParseBool: parsing \"yes\": invalid syntax",
        ),
    ];
    for (expr, want) in table {
        let err = Filter::new(expr, CHECK_SERVICE_NODE).unwrap_err();
        assert_eq!(err.to_string(), format!("{prefix}{want}"), "{expr}");
    }
    let parse_errors: &[(&str, &str)] = &[
        ("(Service.Service == web", "Unmatched parentheses"),
        ("Service.Service == \"web", "Unterminated string literal"),
        ("Node.Meta[rack] == x", "Invalid index"),
        ("Node.Meta[\"rack\" == x", "Unclosed index expression"),
        ("Service.Port == 8x", "Invalid number literal"),
        ("Service.Service ==", "no match found"),
        ("Service.Service", "no match found"),
        ("Service.Service == web or", "no match found"),
        ("== web", "no match found"),
        (
            "Service.Service matches \"(\"",
            "Failed to compile regular expression \"(\"",
        ),
    ];
    for (expr, want) in parse_errors {
        let err = Filter::new(expr, CHECK_SERVICE_NODE)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(prefix), "{expr}: {err}");
        assert!(err.contains(want), "{expr}: {err}");
    }
    let many = vec!["Service.Port == 1"; 33].join(" or ");
    assert!(
        Filter::new(&many, CHECK_SERVICE_NODE)
            .unwrap_err()
            .to_string()
            .contains("exceeds the limit (32)")
    );
}

#[test]
fn each_element_type_has_its_selectors() {
    let table = [
        (
            NODE,
            "Meta.env == prod and TaggedAddresses.lan == x and Node == a",
        ),
        (
            SERVICE_NODE,
            "ServiceTags contains a and NodeMeta.x == y and ServiceMeta.v == 1 and ServicePort == 1",
        ),
        (
            AGENT_SERVICE,
            "Service == a and Tags contains b and Datacenter == dc1",
        ),
        (
            HEALTH_CHECK,
            "Status == passing and ServiceName == a and ServiceTags contains t and Definition.HTTP == x",
        ),
    ];
    for (ty, expr) in table {
        Filter::new(expr, ty).unwrap_or_else(|e| panic!("{expr}: {e}"));
    }
    assert!(Filter::new("ServiceName == a", NODE).is_err());
    assert!(Filter::new("Datacenter == a", super::schema::NODE_SERVICE).is_err());
}
