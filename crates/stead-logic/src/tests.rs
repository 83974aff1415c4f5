use serde_json::{Value, json};

use crate::error::RuleFault;
use crate::js::{js_number_string, js_parse_number};
use crate::rule::{Root, Rule, split_path};

fn run(rule: Value, data: Value) -> Result<Value, RuleFault> {
    let rule = Rule::compile(&rule).unwrap();
    let Value::Object(context) = data else {
        panic!("an object")
    };
    let flagd = json!({"flagKey": "f", "timestamp": 1});
    rule.evaluate(Root {
        context: &context,
        flagd: &flagd,
    })
}

#[test]
fn scoped_rules_reach_out_of_iterations_and_flag_rules_do_not() {
    let data = json!({"now": 100, "who": "a", "moves": [
        {"c": "a", "at": 95}, {"c": "b", "at": 99}, {"c": "a", "at": 10}
    ]});
    let data = data.as_object().unwrap();
    let recent = json!({"filter": [{"var": "moves"}, {"and": [
        {"==": [{"var": "c"}, {"var": "../who"}]},
        {">": [{"var": "at"}, {"-": [{"var": "../now"}, 50]}]}
    ]}]});
    let scoped = Rule::compile_scoped(&recent).unwrap();
    assert_eq!(scoped.apply(data).unwrap(), json!([{"c": "a", "at": 95}]));
    // Two levels out, and `../` at the root stays at the root.
    let nested = json!({"map": [[1], {"map": [[2], {"var": "../../now"}]}]});
    assert_eq!(
        Rule::compile_scoped(&nested).unwrap().apply(data).unwrap(),
        json!([[100]])
    );
    assert_eq!(
        Rule::compile_scoped(&json!({"var": "../now"}))
            .unwrap()
            .apply(data)
            .unwrap(),
        json!(100)
    );
    // A reduce step sees its accumulator and the data around it.
    let count = json!({"reduce": [{"var": "moves"},
        {"+": [{"var": "accumulator"}, {"if": [{"==": [{"var": "current.c"}, {"var": "../who"}]}, 1, 0]}]}, 0]});
    assert_eq!(
        Rule::compile_scoped(&count).unwrap().apply(data).unwrap(),
        json!(2)
    );
    // Flag targeting keeps flagd's reading: `../who` is a key nobody has.
    assert_eq!(
        Rule::compile(&recent).unwrap().apply(data).unwrap(),
        json!([])
    );
}

#[test]
fn javascript_numbers_print_as_javascript_does() {
    assert_eq!(js_number_string(1.0), "1");
    assert_eq!(js_number_string(1.5), "1.5");
    assert_eq!(js_number_string(1e21), "1e+21");
    assert_eq!(js_number_string(1.5e-7), "1.5e-7");
    assert_eq!(js_number_string(-0.0), "0");
    assert_eq!(js_parse_number(" 42 "), 42.0);
    assert_eq!(js_parse_number("0x1A"), 26.0);
    assert!(js_parse_number("inf").is_nan());
    assert!(js_parse_number("1,5").is_nan());
    assert_eq!(js_parse_number(""), 0.0);
}

#[test]
fn paths_escape_dots() {
    assert_eq!(split_path("a.b"), vec!["a", "b"]);
    assert_eq!(split_path(r"a\.b.c"), vec!["a.b", "c"]);
}

#[test]
fn comparisons_coerce_like_the_reference() {
    assert_eq!(run(json!({"==": [null, 0]}), json!({})), Ok(json!(true)));
    assert_eq!(run(json!({"==": ["42", 42]}), json!({})), Ok(json!(true)));
    assert_eq!(
        run(json!({"==": ["abc", 42]}), json!({})),
        Err(RuleFault::NaN)
    );
    assert_eq!(run(json!({"<": [1, 2, 3]}), json!({})), Ok(json!(true)));
    assert_eq!(run(json!({"<": ["a", "b"]}), json!({})), Ok(json!(true)));
    assert_eq!(run(json!({"===": [1, 1.0]}), json!({})), Ok(json!(true)));
}

#[test]
fn unknown_operations_and_impossible_arithmetic_do_not_compile() {
    let e = Rule::compile(&json!({"if": [{"nope": [1]}, 1, 2]})).unwrap_err();
    assert_eq!(e.path, "/if/0/nope");
    let e = Rule::compile(&json!({"+": ["abc", 1]})).unwrap_err();
    assert_eq!(e.path, "/+/0");
    assert!(Rule::compile(&json!({"a": 1, "b": 2})).is_err());
}
