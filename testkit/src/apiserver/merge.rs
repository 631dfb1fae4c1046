//! JSON merge patch (RFC 7386), the `application/merge-patch+json` patch type. Strategic
//! merge patches are applied the same way: for the fields the fake's users patch (labels,
//! annotations, status) the two agree; list merging by key is not implemented.

use serde_json::Value;

/// Applies `patch` to `target` in place. Nesting is bounded by the depth of `patch`, which
/// the JSON parser already bounds (serde_json's recursion limit of 128).
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target_map) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                target_map.remove(k);
            } else {
                merge(target_map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        super::merge(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": ["b"]});
        super::merge(&mut t, &json!({"a": ["c", "d"]}));
        assert_eq!(t, json!({"a": ["c", "d"]}));
        let mut t = json!("x");
        super::merge(&mut t, &json!({"a": {"b": 1}}));
        assert_eq!(t, json!({"a": {"b": 1}}));
    }
}
